"""Continual knowledge measured: one stream of documents, several seeded orders, every strategy on the same orders.

`run_streams` feeds a list of documents (with their questions as probes, and given self-edits) into one store per
(order, strategy), `per_update` documents at a time, through the same `update_store` a user runs from cron, and
collects each store's forgetting metrics; `summarize` compares strategies paired over orders with bootstrap 95%
intervals. `seal-tt demo --continual` runs it on the synthetic world (`world_stream`), where the student really
knows a fact only after it absorbs it; `benchmarks/continual_squad.py` runs it on SmolLM2 and SQuAD passages.

Every store is an ordinary, resumable store folder (`seal-tt status --store ...` reads it); a rerun continues
where it stopped.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from core.config import _deep_merge, load_config
from core.progress import say
from core.rundir import atomic_write_json, atomic_write_text
from pipeline.documents import Document
from pipeline.store.config import StoreConfig

# The strategies compared, as overrides of the stream's base settings.
STRATEGIES: dict[str, dict] = {
    "merge": {"strategy": "merge"},
    "replay": {"strategy": "replay", "replay": {"ratio": 1.0}},
    "library": {"strategy": "library"},
    "joint": {"strategy": "joint"},
    "merge+gate": {"strategy": "merge", "gate": {"max_drop": 0.05, "action": "scale", "min_scale": 0.125}},
}


def _doc_line(doc: Document) -> dict:
    return {"id": doc.id, "title": doc.title, "text": doc.text,
            "questions": [{"question": q.question, "answers": list(q.answers)} for q in doc.questions]}


def order_of(docs: list[Document], order_seed: int) -> list[Document]:
    out = list(docs)
    random.Random(order_seed).shuffle(out)
    return out


def run_streams(output: str | Path, docs: list[Document], edits: dict[str, list[str]], base: dict, *,
                orders: list[int], per_update: int, strategies: dict[str, dict] | None = None,
                progress: bool = False) -> dict:
    """Run every (order, strategy) stream into `output/order_<seed>/<strategy>/store`; returns the metrics."""
    from pipeline.store.status import store_status
    from pipeline.store.update import update_store

    strategies = strategies or STRATEGIES
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    edits_file = out / "edits.jsonl"
    atomic_write_text(edits_file, "".join(json.dumps({"document": d, "completion": c}, ensure_ascii=False) + "\n"
                                          for d, cs in edits.items() for c in cs))
    results: dict = {}
    for order_seed in orders:
        stream = order_of(docs, order_seed)
        folder = out / f"order_{order_seed}"
        steps = []
        for s in range(0, len(stream), per_update):
            path = folder / f"docs_{s // per_update + 1:02d}.jsonl"
            if not path.exists():
                atomic_write_text(path, "".join(json.dumps(_doc_line(d), ensure_ascii=False) + "\n"
                                                for d in stream[: s + per_update]))
            steps.append(path)
        for name, overrides in strategies.items():
            store = folder / name.replace("+", "_") / "store"
            data = _deep_merge(_deep_merge(base, overrides), {"store": str(store), "edits": {"file": str(edits_file)}})
            for step in steps:
                cfg: StoreConfig = load_config(StoreConfig, None, _deep_merge(data, {"docs": [str(step)]}))
                update_store(cfg, progress=progress)
            status = store_status(str(store))
            results.setdefault(name, {})[order_seed] = {
                "metrics": status["metrics"], "matrix": _matrix(store),
                "seconds": sum(sum((u.get("timings") or {}).values()) for u in status["updates"]),
                "mb_per_document": status["mb_per_document"],
                "decisions": [u["decision"] for u in status["updates"]],
                "scales": [u["scale"] for u in status["updates"]],
                "drift": status["updates"][-1]["drift_bits_per_token"] if status["updates"] else None,
            }
            m = status["metrics"]
            say(f"continual: order {order_seed} {name}: acquisition {_f(m['acquisition'])} retention "
                f"{_f(m['retention'])} BWT {_f(m['backward_transfer'])}")
    return results


def _matrix(store: Path) -> list[list[float | None]]:
    from pipeline.store.layout import Store
    from pipeline.store.metrics import batch_matrix

    state = Store(store).state()
    numbers = [r.update for r in state.matrix]
    index = {n: i for i, n in enumerate(numbers)}
    learned = {k: index[v.update] for k, v in state.active().items() if v.update in index}
    return batch_matrix([r.scores for r in state.matrix], learned)


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def summarize(results: dict, reference: str = "merge") -> dict:
    """Per strategy: mean metrics with bootstrap 95% intervals over orders, and paired differences to `reference`."""
    from pipeline.stats import bootstrap_mean, paired_bootstrap

    names = ("acquisition", "retention", "backward_transfer", "gain_kept", "final_accuracy")
    out: dict = {}
    ref = results.get(reference, {})
    for name, per_order in results.items():
        orders = sorted(per_order)
        row: dict = {"orders": len(orders)}
        for metric in names:
            values = [per_order[o]["metrics"][metric] for o in orders if per_order[o]["metrics"][metric] is not None]
            row[metric] = bootstrap_mean(values) if values else None
            if ref and name != reference and values and len(values) == len(orders):
                paired = [o for o in orders if o in ref and ref[o]["metrics"][metric] is not None]
                row[f"{metric}_minus_{reference}"] = paired_bootstrap(
                    [per_order[o]["metrics"][metric] for o in paired], [ref[o]["metrics"][metric] for o in paired])
        oracle = [per_order[o]["metrics"].get("oracle_retention") for o in orders]
        if all(v is not None for v in oracle) and oracle:
            row["oracle_retention"] = bootstrap_mean(oracle)
            actual = [per_order[o]["metrics"]["retention"] for o in orders]
            row["routing_kept"] = (sum(actual) / sum(oracle)) if sum(oracle) else None
        row["seconds_per_stream"] = sum(per_order[o]["seconds"] for o in orders) / len(orders)
        row["mb_per_document"] = per_order[orders[0]]["mb_per_document"]
        row["drift"] = bootstrap_mean([per_order[o]["drift"] for o in orders if per_order[o]["drift"] is not None])
        row["decisions"] = {d: sum(per_order[o]["decisions"].count(d) for o in orders)
                            for d in ("accepted", "scaled", "rejected")}
        out[name] = row
    return out


def _ci(x: dict | None) -> str:
    if not x:
        return "-"
    return f"{x['mean']:.3f} [{x['low']:.3f}, {x['high']:.3f}]"


def summary_markdown(summary: dict, *, stream: str, reference: str = "merge") -> str:
    lines = [f"Continual knowledge: {stream}. Means over orders with bootstrap 95% intervals; differences to "
             f"`{reference}` paired over orders.", "",
             "| strategy | acquisition | retention | retention − merge | backward transfer | gain kept | drift (bits/token) "
             "| MB / document | s / stream | gate |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in summary.items():
        diff = row.get(f"retention_minus_{reference}")
        gate = ", ".join(f"{v} {k}" for k, v in row["decisions"].items() if v and k != "accepted") or "-"
        lines.append(f"| {name} | {_ci(row['acquisition'])} | {_ci(row['retention'])} | {_ci(diff) if diff else '-'} | "
                     f"{_ci(row['backward_transfer'])} | {_ci(row['gain_kept'])} | {_ci(row['drift'])} | "
                     f"{row['mb_per_document']:.3f} | {row['seconds_per_stream']:.0f} | {gate} |")
    lib = summary.get("library")
    if lib and lib.get("oracle_retention") is not None:
        lines += ["", f"library routing: actual retention {_ci(lib['retention'])}, oracle routing "
                      f"{_ci(lib['oracle_retention'])}: actual keeps "
                      + (f"{lib['routing_kept']:.1%} of the oracle's" if lib.get("routing_kept") is not None
                         else "- (the oracle keeps nothing)")]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path, title: str) -> None:
    """One heatmap per strategy: the score of update j's documents (columns) after update i (rows), mean over orders."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        # A store whose gate rejected an update has fewer rows: pad with unknown cells before averaging.
        size = max((len(r["matrix"]) for r in results[name].values()), default=1)
        mats = []
        for r in results[name].values():
            m = np.full((size, size), np.nan)
            for i, row in enumerate(r["matrix"]):
                m[i, : len(row)] = [np.nan if v is None else v for v in row]
            mats.append(m)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-unknown cell stays unknown
                mean = np.nanmean(np.stack(mats), axis=0) if mats else np.zeros((1, 1))
        mean = np.where(np.tril(np.ones_like(mean)) > 0, mean, np.nan)
        im = ax.imshow(mean, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(name)
        ax.set_xlabel("documents of update j")
        if ax is axes[0][0]:
            ax.set_ylabel("after update i")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="probe score")
    fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ------------------------------------------------------------------------------------- the synthetic world
def world_stream(wm, n_docs: int, *, offset: int = 0, styles: tuple[str, ...] = ("qa", "facts")
                 ) -> tuple[list[Document], dict[str, list[str]]]:
    """`n_docs` held-out people of the world (from `offset`), with their questions, and self-edits for each in the
    world's two good styles (a question-answer pair per fact; a name-first sentence per fact: what the demo's
    trained teacher writes 89% of the time), written by the generator. The continual demo measures what the student
    keeps, so every strategy gets the same, known-good self-edits and no teacher is sampled."""
    from pipeline.documents import load_documents
    from pipeline.world.generator import make_world, render_self_edit
    from pipeline.world import WorldRecipe

    recipe = WorldRecipe.from_json(wm.manifest["recipe"]) if "recipe" in wm.manifest else WorldRecipe()
    world = make_world(wm.manifest.get("seed", 0), recipe.spec)
    docs = load_documents([wm.data["heldout"]])[offset: offset + n_docs]
    edits = {}
    for d in docs:
        person = world.by_name[d.title]
        edits[d.id] = [render_self_edit(person, world.by_name[person.sibling], style, random.Random(0))
                       for style in styles]
    return docs, edits


CONTINUAL_TRAIN = {"batch_size": 8, "epochs": 20}


def world_base_settings(wm) -> dict:
    from pipeline.demo import DEMO_SETTINGS

    s = DEMO_SETTINGS
    # One update absorbs 4 people at once, in batches of 8 for 20 epochs (60 steps), not the demo's one person in
    # one batch for 40: chosen on a calibration stream (people 100-131, order seed 100) that the comparison does not
    # use, where the demo's setting acquired 0.58 and this one 0.76, so that there is something to forget.
    return {"student": {"model": {"path": str(wm.student), **s["student"]["model"]}, "lora": s["student"]["lora"],
                        "train": {**s["student"]["train"], **CONTINUAL_TRAIN},
                        "eval": {**s["student"]["eval"], "qa_prompt": wm.qa_prompt}},
            "self_edit": {**s["self_edit"], "prompt": wm.teacher_prompt}, "edits": {"count": None},
            "probes": {"teacher_questions": False}}


def continual_demo(output: str | Path = "runs/demo-continual", *, docs: int = 32, per_update: int = 4,
                   orders: list[int] | None = None, seed: int = 0, overrides: list[str] | None = None,
                   cache=None, recipe=None, progress: bool = False) -> dict:
    from core.config import parse_override
    from core.cache import cache_root
    from pipeline.world import build_world_models

    orders = orders or list(range(8))
    wm = build_world_models(Path(cache or cache_root()).expanduser(), seed, recipe, log=say)
    stream, edits = world_stream(wm, docs)
    base = world_base_settings(wm)
    for item in overrides or []:
        base = _deep_merge(base, parse_override(item))
    load_config(StoreConfig, None, base)  # a typo in --set is reported before any work
    results = run_streams(output, stream, edits, base, orders=orders, per_update=per_update, progress=progress)
    summary = summarize(results)
    out = Path(output)
    stream_name = (f"the synthetic world (seed {seed}), {docs} held-out people in updates of {per_update}, "
                   f"{len(orders)} orders")
    report = {"stream": stream_name, "orders": orders, "settings": base, "summary": summary, "results": results,
              "targets": targets(summary)}
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "continual.md", summary_markdown(summary, stream=stream_name) + targets_markdown(report["targets"]))
    plot(results, out / "continual.png", f"Probe score matrix, mean over {len(orders)} orders")
    return report


def targets(summary: dict) -> dict:
    """The issue's targets, fixed before the comparison."""
    out = {}
    rep, mer = summary.get("replay"), summary.get("merge")
    if rep and mer:
        d = rep["retention_minus_merge"]
        acq = rep["acquisition_minus_merge"]
        # "At an acquisition within 0.05 of merge's": replay must not buy retention with acquisition. Read one-sided
        # (not more than 0.05 below); the two-sided reading is reported beside it.
        out["replay_beats_merge"] = {"retention_diff": d, "acquisition_diff": acq,
                                     "met": d["low"] > 0 and acq["mean"] >= -0.05,
                                     "acquisition_within_two_sided": abs(acq["mean"]) <= 0.05}
    lib = summary.get("library")
    if lib and lib.get("routing_kept") is not None:
        out["library_routing"] = {"kept": lib["routing_kept"], "met": lib["routing_kept"] >= 0.9}
    return out


def targets_markdown(t: dict) -> str:
    lines = [""]
    if "replay_beats_merge" in t:
        r = t["replay_beats_merge"]
        lines.append(f"- target: replay's retention − merge's > 0 with the interval above 0, at an acquisition no more "
                     f"than 0.05 below merge's: {_ci(r['retention_diff'])}, acquisition "
                     f"{_ci(r['acquisition_diff'])} -> {'met' if r['met'] else 'NOT met'}"
                     + ("" if r["acquisition_within_two_sided"] else
                        " (read two-sided, |acquisition difference| <= 0.05, it is not: replay acquires more)"))
    if "library_routing" in t:
        r = t["library_routing"]
        lines.append(f"- target: library's actual routing keeps >= 90% of its oracle-routing retention: "
                     f"{r['kept']:.1%} -> {'met' if r['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"



