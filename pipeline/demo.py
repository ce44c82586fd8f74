"""Demonstrations: `seal-tt demo` (the README's main command) and the ReST-EM comparison behind it.

`quick_demo` runs one adapt-student on random tiny models and the embedded sample documents: it checks the
plumbing offline, not learning. `run_demo` is the full demonstration on any student, teacher and data with known
answers: ReST-EM rounds, then on held-out contexts the student's accuracy with no adaptation, after absorbing the raw
document, the round-0 teacher's self-edits and the trained teacher's, with 95% intervals, `report.json`, `demo.md`
and a plot. (The embedded synthetic world it is meant to run on by default is not part of this release yet.)
"""

from __future__ import annotations

import os
import statistics
from importlib import resources
from pathlib import Path

from pipeline.config import AdaptConfig, TrainTeacherConfig, _deep_merge, load_config, parse_override

# The demo's ReST-EM settings, visible in one place; `--set` overrides any of them.
DEMO_SETTINGS: dict = {
    "rounds": 2,
    "data": {"contexts_per_round": 32, "heldout_contexts": 48, "fresh_per_round": True},
    "teacher": {"generation": {"num_samples": 5, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 96,
                               "batch_size": 5, "use_chat_template": "never"}},
    "self_edit": {"split": "lines", "prefix_title": False, "include_passage": False, "min_chars": 4},
    "student": {
        "model": {"dtype": "float32"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0,
                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
        "train": {"learning_rate": 3e-3, "epochs": 40, "batch_size": 64, "max_length": 256},
        "eval": {"max_new_tokens": 4, "batch_size": 64, "metric": "exact_match", "use_chat_template": "never"},
    },
    "rest_em": {"seeds_per_edit": 1, "selection": "best_of_k", "must_beat_baseline": True, "m_step_init": "previous",
                "heldout_samples": 3},
    "m_step": {"lora": {"r": 32, "alpha": 64, "dropout": 0.0,
                        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
               "learning_rate": 3e-3, "epochs": 4, "batch_size": 8, "max_length": 512},
}


def cache_dir() -> Path:
    return Path(os.environ.get("SEAL_TT_CACHE", Path.home() / ".cache" / "seal-tt"))


def sample_docs() -> Path:
    return Path(str(resources.files("pipeline").joinpath("data/sample_docs.jsonl")))


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


def run_demo(wm, output: str | Path, *, seed: int, overrides: list[str] | None = None, progress: bool = True,
             force: bool = False) -> dict:
    """The demonstration on given models and data. `wm` has `student`, `teacher` (model folders), `data["rl"]` and
    `data["heldout"]` (documents with questions), `qa_prompt`, `teacher_prompt` and `root`."""
    from pipeline.rundir import atomic_write_json, atomic_write_text
    from pipeline.train_teacher import train_teacher

    config = demo_config(wm, output, overrides)
    metrics = train_teacher(config, progress=progress, force=force)
    out = Path(config.output)
    raw = _raw_document_scores(config, out, progress)
    report = _world_report(config, metrics, raw, out, seed, wm)
    atomic_write_json(out / "report.json", report)
    table = demo_table(report)
    atomic_write_text(out / "demo.md", table)
    _plot(report, out / "demo.png")
    return report


def _raw_document_scores(config: TrainTeacherConfig, out: Path, progress: bool) -> list[dict]:
    """The student after absorbing each held-out passage itself (same seeds and settings as the self-edits)."""
    import json

    from pipeline.adapt import context_seed
    from pipeline.documents import load_documents
    from pipeline.progress import progress_bar
    from pipeline.rundir import append_jsonl, read_jsonl
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
            baseline = task.baseline(engine, doc)
            score = task.score(engine, doc, Prepared(True, payload=[doc.text]), seed)
            rec = {"context": doc.id, "baseline": baseline, "score": score}
            append_jsonl(path, rec)
            done[doc.id] = rec
    return [done[i] for i in ids]


def _mean_ci(values: list[float]) -> dict:
    mean = statistics.fmean(values) if values else 0.0
    ci = 1.96 * statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return {"mean": mean, "ci95": ci, "n": len(values)}


def _world_report(config, metrics, raw, out: Path, seed: int, wm) -> dict:
    from pipeline.rundir import read_jsonl

    last = max(m["round"] for m in metrics)

    def heldout(r):
        return read_jsonl(out / f"round_{r}" / "heldout.jsonl")

    def per_context(records, key):
        by: dict[str, list[float]] = {}
        for rec in records:
            by.setdefault(rec["context"], []).append(rec[key])
        return [statistics.fmean(v) for v in by.values()]

    conditions = {
        "no adaptation": _mean_ci([r["baseline"] for r in raw]),
        "raw document": _mean_ci([r["score"] for r in raw]),
        "round-0 teacher self-edits": _mean_ci(per_context(heldout(0), "score")),
        f"trained teacher self-edits (round {last})": _mean_ci(per_context(heldout(last), "score")),
    }
    rounds = []
    for m in metrics:
        recs = heldout(m["round"])
        rounds.append({
            "round": m["round"],
            "heldout_reward": _mean_ci([x["score"] - x["baseline"] for x in recs]),
            "heldout_accuracy": _mean_ci([x["score"] for x in recs]),
            "e_step_reward": (m.get("e_step") or {}).get("reward_mean"),
            "selected": m.get("selected"),
        })
    r0, rl = rounds[0]["heldout_reward"]["mean"], rounds[-1]["heldout_reward"]["mean"]
    raw_acc = conditions["raw document"]["mean"]
    trained_acc = conditions[f"trained teacher self-edits (round {last})"]["mean"]
    return {
        "world_seed": seed,
        "world": str(wm.root),
        "output": str(out),
        "heldout_people": len(raw),
        "conditions": conditions,
        "rounds": rounds,
        "targets": {
            "reward_gain_over_round0": {"value": rl - r0, "target": 0.2, "met": rl - r0 >= 0.2},
            "trained_vs_raw_accuracy": {"value": trained_acc / raw_acc if raw_acc else None, "target": 2.0,
                                        "met": bool(raw_acc) and trained_acc >= 2 * raw_acc},
        },
    }


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
    t = report["targets"]
    g, a = t["reward_gain_over_round0"], t["trained_vs_raw_accuracy"]
    ratio = "n/a" if a["value"] is None else f"{a['value']:.2f}x"
    lines += ["", f"- trained teacher's held-out reward minus round 0: {g['value']:+.3f} "
                  f"(target >= +0.2: {'met' if g['met'] else 'NOT met'})",
              f"- trained-teacher accuracy / raw-document accuracy: {ratio} "
              f"(target >= 2x: {'met' if a['met'] else 'NOT met'})"]
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in report["rounds"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    rw = [r["heldout_reward"] for r in report["rounds"]]
    ax1.errorbar(rounds, [x["mean"] for x in rw], yerr=[x["ci95"] for x in rw], marker="o", capsize=4)
    ax1.set(title="held-out mean reward per ReST-EM round", xlabel="round", ylabel="accuracy gain", xticks=rounds)
    acc = [r["heldout_accuracy"] for r in report["rounds"]]
    ax2.errorbar(rounds, [x["mean"] for x in acc], yerr=[x["ci95"] for x in acc], marker="o", capsize=4,
                 label="teacher's self-edits")
    for name, style in (("raw document", "--"), ("no adaptation", ":")):
        ax2.axhline(report["conditions"][name]["mean"], linestyle=style, color="gray", label=name)
    ax2.set(title="held-out accuracy", xlabel="round", ylabel="exact match", xticks=rounds, ylim=(0, 1))
    ax2.legend(loc="best")
    fig.suptitle(f"seal-tt demo, world seed {report['world_seed']}")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def quick_demo(output: str | Path = "runs/demo-quick", *, progress: bool = True) -> dict:
    """Tiny random models, the embedded sample documents, one adapt-student run. Checks the plumbing, not learning."""
    from pipeline.adapt import adapt_student
    from pipeline.tiny import build_tiny_models

    models = build_tiny_models(cache_dir() / "tiny")
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
    return adapt_student(config, progress=progress, force=True)
