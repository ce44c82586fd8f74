"""`seal-tt demo`: the embedded default the README's main command runs, needing no download.

The full demonstration trains nothing from the hub: it builds (or reuses from the cache) a procedurally generated
knowledge world with its own small student and teacher (`pipeline.world`), runs ReST-EM on the world's training
people, and compares on held-out people the student's accuracy with no adaptation, after absorbing the raw
document, after absorbing the round-0 teacher's self-edits and after the trained teacher's. `--quick` instead runs
one adapt-student on random tiny models: it checks the plumbing, not learning.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from core.cache import cache_root
from core.config import _deep_merge, load_config, parse_override, read_yaml
from core.errors import UserError
from core.progress import say
from pipeline.samples import sample_docs
from pipeline.settings import AdaptConfig, TrainTeacherConfig
from pipeline.stats import mean_ci95, ratio_bootstrap

# The demo's ReST-EM settings, a shipped YAML validated like configs/ (tests/test_config.py); `--set` overrides any.
DEMO_YAML = Path(__file__).resolve().parent / "data" / "demo.yaml"
DEMO_SETTINGS: dict = read_yaml(DEMO_YAML)


def demo_config(wm, output: str | Path, overrides: list[str] | None = None) -> TrainTeacherConfig:
    data: dict = _deep_merge(DEMO_SETTINGS, {
        "output": str(output),
        "data": {"docs": [str(wm.data["rl"])], "heldout_docs": [str(wm.data["heldout"])]},
        "teacher": {"model": {"path": str(wm.teacher)}},
        "student": {"model": {"path": str(wm.student)}, "eval": {"qa_prompt": wm.qa_prompt}},
        "self_edit": {"prompt": wm.teacher_prompt},
    })
    for item in overrides or []:
        data = _deep_merge(data, parse_override(item))
    return load_config(TrainTeacherConfig, None, data)


def world_demo(output: str | Path = "runs/demo", *, seeds: list[int] | tuple[int, ...] = (0,),
               overrides: list[str] | None = None, progress: bool = True, force: bool = False,
               cache: str | Path | None = None, recipe=None, wait: bool = False) -> dict:
    """For each world seed: build (or reuse) the world, run the demonstration into `output/seed_N`; then write
    the summary over seeds to `output` (report.json, demo.md, demo.png). Reruns resume every seed. One demo writes
    `output` at a time (`wait`: wait for another one there to end instead of refusing)."""
    from core.rundir import atomic_write_json, atomic_write_text
    from pipeline.runfolder import run_lock
    from pipeline.world import build_world_models

    if not seeds:
        raise UserError("demo: give at least one world seed")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"demo: world seeds repeat: {list(seeds)}")
    _check_settings(overrides)  # a typo in --set must not wait for a world build to be reported
    cache = Path(cache or cache_root()).expanduser()
    _check_writable(cache, "the world cache (set SEAL_TT_CACHE to move it)")
    for seed in seeds:
        _check_writable(Path(output) / f"seed_{seed}", "the demo's output folder")
    with run_lock(output, wait=wait):
        reports = []
        for seed in seeds:
            say(f"world seed {seed}: building the world's student and teacher (cached after the first run) ...")
            wm = build_world_models(cache, seed, recipe, log=say)
            reports.append(run_demo(wm, Path(output) / f"seed_{seed}", seed=seed, overrides=overrides,
                                    progress=progress, force=force, describe=self_edit_style(wm, seed)))
        summary = {"output": str(output), "seeds": list(seeds), "per_seed": reports,
                   "targets_met": {k: sum(r["targets"][k]["met"] for r in reports) for k in reports[0]["targets"]}}
        out = Path(output)
        atomic_write_json(out / "report.json", summary)
        atomic_write_text(out / "demo.md", summary_table(summary))
        _plot(reports, out / "demo.png")
    return summary


def _check_writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write {what} at {folder}: {err.strerror or err}") from None


def _check_settings(overrides: list[str] | None) -> None:
    from types import SimpleNamespace

    placeholder = SimpleNamespace(student="student", teacher="teacher", data={"rl": "rl", "heldout": "heldout"},
                                  qa_prompt="{question}", teacher_prompt="{passage}")
    demo_config(placeholder, "output", overrides)


def self_edit_style(wm, seed: int):
    """record -> the style of its self-edit (qa, facts, partial, restate, noise, mixed, empty), parsed against
    the facts of the world's person the document is about: what ReST-EM shifts the teacher towards."""
    from pipeline.documents import load_documents
    from pipeline.world.generator import WorldSpec, analyse_self_edit, make_world

    world = make_world(seed, WorldSpec(**wm.manifest["recipe"]["spec"]))
    person = {d.id: world.by_name[d.title] for d in load_documents(wm.data["heldout"])}
    return lambda rec: analyse_self_edit(rec["self_edit"], person[rec["context"]])["style"]


def run_demo(wm, output: str | Path, *, seed: int, overrides: list[str] | None = None, progress: bool = True,
             force: bool = False, describe=None) -> dict:
    """The demonstration on given models and data (`wm`: student, teacher, data splits, the two prompts).
    `describe(record) -> label`, when given, adds each round's held-out self-edits counted by label."""
    from core.rundir import atomic_write_json, atomic_write_text
    from pipeline.train_teacher import train_teacher

    config = demo_config(wm, output, overrides)
    metrics = train_teacher(config, progress=progress, force=force)
    out = Path(config.output)
    raw = _raw_document_scores(config, out, progress)
    report = _world_report(metrics, raw, out, seed, wm, describe)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "demo.md", demo_table(report))
    _plot([report], out / "demo.png")
    return report


def _raw_document_scores(config: TrainTeacherConfig, out: Path, progress: bool) -> list[dict]:
    """The student after absorbing each held-out passage itself (same seeds and settings as the self-edits)."""
    import json

    from core.seeds import context_seed
    from pipeline.documents import load_documents
    from core.progress import progress_bar
    from core.rundir import append_jsonl, read_jsonl
    from pipeline.tasks.base import Prepared
    from pipeline.tasks.knowledge import KnowledgeTask
    from student.engine import StudentEngine

    path = out / "raw_document.jsonl"
    done = {r["context"]: r for r in read_jsonl(path)}
    ids = json.loads((out / "splits.json").read_text(encoding="utf-8"))["heldout"]
    docs = {d.id: d for d in load_documents(config.data.heldout_docs)}
    todo = [docs[i] for i in ids if i not in done]
    if todo:
        task = KnowledgeTask(config.self_edit, config.student.train, config.student.eval)
        engine = StudentEngine(config.student.model, config.student.lora)
        seed = context_seed(config.seed, "student", 0)  # the seed the held-out self-edits were scored with
        for doc in progress_bar(todo, desc="raw documents", enabled=progress):
            baseline = float(task.baseline(engine, doc))
            score = float(task.score(engine, doc, Prepared(True, payload=[doc.text]), seed))
            rec = {"context": doc.id, "baseline": baseline, "score": score}
            append_jsonl(path, rec)
            done[doc.id] = rec
    return [done[i] for i in ids]


def _ratio_ci(num: list[float], den: list[float], resamples: int = 2000) -> dict:
    """mean(num) / mean(den) with a paired percentile-bootstrap 95% interval over people (seeded: reproducible).
    A ratio over a zero denominator is None (JSON has no infinity); resamples whose denominator is 0 count as
    infinite ratios."""
    return ratio_bootstrap(num, den, resamples=resamples, seed=0, undefined="inf")


def _world_report(metrics, raw, out: Path, seed: int, wm, describe=None) -> dict:
    """Every figure is a mean over held-out people (each person's self-edit samples averaged first), so the
    intervals are over people, the unit the world draws independently."""
    from core.rundir import read_jsonl

    last = max(m["round"] for m in metrics)
    people = [r["context"] for r in raw]
    heldout = {m["round"]: read_jsonl(out / f"round_{m['round']}" / "heldout.jsonl") for m in metrics}

    def per_person(r: int, key) -> list[float]:
        by: dict[str, list[float]] = {}
        for rec in heldout[r]:
            by.setdefault(rec["context"], []).append(key(rec))
        return [statistics.fmean(by[p]) for p in people]

    def accuracy(rec):
        return rec["score"]

    def reward(rec):
        return rec["score"] - rec["baseline"]

    raw_acc = [r["score"] for r in raw]
    trained = per_person(last, accuracy)
    conditions = {
        "no adaptation": mean_ci95([r["baseline"] for r in raw]),
        "raw document": mean_ci95(raw_acc),
        "round-0 teacher self-edits": mean_ci95(per_person(0, accuracy)),
        f"trained teacher self-edits (round {last})": mean_ci95(trained),
    }
    rounds = [{
        "round": m["round"],
        "heldout_reward": mean_ci95(per_person(m["round"], reward)),
        "heldout_accuracy": mean_ci95(per_person(m["round"], accuracy)),
        "e_step_reward": (m.get("e_step") or {}).get("reward_mean"),
        "selected": m.get("selected"),
    } for m in metrics]
    if describe is not None:
        from collections import Counter

        for r in rounds:
            labels = Counter(describe(rec) for rec in heldout[r["round"]])
            total = sum(labels.values())
            r["self_edit_styles"] = {k: v / total for k, v in labels.most_common()}
    gain = mean_ci95([b - a for a, b in zip(per_person(0, reward), per_person(last, reward))])
    ratio = _ratio_ci(trained, raw_acc)
    return {
        "world_seed": seed,
        "world": str(wm.root),
        "output": str(out),
        "heldout_people": len(raw),
        "conditions": conditions,
        "rounds": rounds,
        "targets": {
            "reward_gain_over_round0": {**gain, "target": 0.2, "met": gain["mean"] >= 0.2},
            "trained_vs_raw_accuracy": {**ratio, "target": 2.0,
                                        "met": ratio["mean"] is not None and ratio["mean"] >= 2.0},
        },
    }


def _ratio_text(t: dict) -> str:
    if t["mean"] is None:
        return "n/a"
    high = "inf" if t["high"] is None else f"{t['high']:.2f}"
    return f"{t['mean']:.2f}x [{t['low']:.2f}-{high}]"


def demo_table(report: dict) -> str:
    lines = [f"World seed {report['world_seed']}, {report['heldout_people']} held-out people "
             "(accuracy = exact match over their questions; ± is a 95% interval over people)", "",
             "| student after absorbing | held-out accuracy |", "|---|---|"]
    for name, v in report["conditions"].items():
        lines.append(f"| {name} | {v['mean']:.3f} ± {v['ci95']:.3f} |")
    lines += ["", "| ReST-EM round | held-out mean reward | held-out accuracy | E-step mean reward | selected |",
              "|---|---|---|---|---|"]
    for r in report["rounds"]:
        e = "-" if r["e_step_reward"] is None else f"{r['e_step_reward']:+.3f}"
        lines.append(f"| {r['round']} | {r['heldout_reward']['mean']:+.3f} ± {r['heldout_reward']['ci95']:.3f} | "
                     f"{r['heldout_accuracy']['mean']:.3f} ± {r['heldout_accuracy']['ci95']:.3f} | {e} | "
                     f"{r['selected'] if r['selected'] is not None else '-'} |")
    if all("self_edit_styles" in r for r in report["rounds"]):
        totals: dict[str, float] = {}
        for r in report["rounds"]:
            for k, v in r["self_edit_styles"].items():
                totals[k] = totals.get(k, 0.0) + v
        styles = sorted(totals, key=lambda k: -totals[k])
        lines += ["", "| held-out self-edits by style | " + " | ".join(styles) + " |",
                  "|---|" + "---|" * len(styles)]
        for r in report["rounds"]:
            lines.append(f"| round {r['round']} | "
                         + " | ".join(f"{r['self_edit_styles'].get(k, 0.0):.0%}" for k in styles) + " |")
    t = report["targets"]
    g, a = t["reward_gain_over_round0"], t["trained_vs_raw_accuracy"]
    lines += ["", f"- trained teacher's held-out reward minus round 0's: {g['mean']:+.3f} ± {g['ci95']:.3f} "
                  f"(target >= +0.2: {'met' if g['met'] else 'NOT met'})",
              f"- trained-teacher accuracy / raw-document accuracy: {_ratio_text(a)} "
              f"(target >= 2x: {'met' if a['met'] else 'NOT met'})"]
    return "\n".join(lines) + "\n"


def summary_table(summary: dict) -> str:
    """One row per world seed, then each seed's own tables."""
    reports = summary["per_seed"]
    last = reports[0]["rounds"][-1]["round"]
    lines = ["| world seed | no adaptation | raw document | round-0 teacher | trained teacher (round "
             f"{last}) | reward gain over round 0 | trained / raw |", "|---|---|---|---|---|---|---|"]
    for r in reports:
        c = list(r["conditions"].values())
        g = r["targets"]["reward_gain_over_round0"]
        ratio = _ratio_text(r["targets"]["trained_vs_raw_accuracy"])
        lines.append(f"| {r['world_seed']} | " + " | ".join(f"{v['mean']:.3f} ± {v['ci95']:.3f}" for v in c)
                     + f" | {g['mean']:+.3f} ± {g['ci95']:.3f} | {ratio} |")
    n, met = len(reports), summary["targets_met"]
    lines += ["", "Accuracy with a 95% interval over held-out people; the ratio's interval is a paired bootstrap. "
                  f"Targets met: reward gain >= +0.2 on {met['reward_gain_over_round0']}/{n} seeds, "
                  f"trained >= 2x raw on {met['trained_vs_raw_accuracy']}/{n} seeds."]
    for r in reports:
        lines += ["", demo_table(r).rstrip("\n")]
    return "\n".join(lines) + "\n"


def _plot(reports: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for i, report in enumerate(reports):
        color, name = f"C{i}", f"seed {report['world_seed']}"
        rounds = [r["round"] for r in report["rounds"]]
        rw = [r["heldout_reward"] for r in report["rounds"]]
        ax1.errorbar(rounds, [x["mean"] for x in rw], yerr=[x["ci95"] for x in rw], marker="o", capsize=4,
                     color=color, label=name)
        acc = [r["heldout_accuracy"] for r in report["rounds"]]
        ax2.errorbar(rounds, [x["mean"] for x in acc], yerr=[x["ci95"] for x in acc], marker="o", capsize=4,
                     color=color, label=f"{name}: teacher's self-edits" if len(reports) > 1 else "teacher's self-edits")
        for cond, style in (("raw document", "--"), ("no adaptation", ":")):
            ax2.axhline(report["conditions"][cond]["mean"], linestyle=style, color=color, alpha=0.6,
                        label=(cond if len(reports) == 1 else f"{cond} (one line per seed)") if i == 0 else None)
        ax1.set_xticks(rounds)
        ax2.set_xticks(rounds)
    ax1.set(title="held-out mean reward per ReST-EM round", xlabel="round", ylabel="accuracy gain")
    ax1.legend(loc="best", fontsize="small")
    ax2.set(title="held-out accuracy", xlabel="round", ylabel="exact match", ylim=(0, 1))
    ax2.legend(loc="best", fontsize="x-small")
    seeds = ", ".join(str(r["world_seed"]) for r in reports)
    fig.suptitle(f"seal-tt demo, world seed{'s' if len(reports) > 1 else ''} {seeds} (bars: 95% intervals)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def quick_demo(output: str | Path = "runs/demo-quick", *, progress: bool = True, wait: bool = False) -> dict:
    """Tiny random models, the embedded sample documents, one adapt-student run. Checks the plumbing, not learning."""
    from pipeline.adapt import adapt_student
    from core.tiny import build_tiny_models

    models = build_tiny_models(cache_root() / "tiny")
    config = load_config(
        AdaptConfig,
        None,
        {
            "docs": [str(sample_docs())],
            "output": str(output),
            "teacher": {"model": {"path": str(models["llama"])}, "generation": {"num_samples": 2, "max_new_tokens": 48}},
            "student": {"model": {"path": str(models["qwen2"])}, "lora": {"r": 8, "alpha": 16},
                        "train": {"epochs": 2, "batch_size": 4}, "eval": {"max_new_tokens": 16}},
        },
    )
    return adapt_student(config, progress=progress, force=True, wait=wait)
