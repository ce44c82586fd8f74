"""The table of `real_teacher.py`: each teacher's held-out row beside the evaluation run's rows (a)-(d), the recipe and
the ceiling (`real_recipe.py --plan eval`, graded here by contains_numeric from its saved replies), with paired
intervals over passages against (b) passage-only and against (w) the warm-started teacher; and ReST-EM's reward
statistics per round."""

from __future__ import annotations

import json
from pathlib import Path

GRADER = "contains_numeric"
EVAL_ROWS = {"none": "(a) no adaptation", "passage": "(b) passage only", "implications": "(c) implications (7B base)",
             "rl1": "(d) implications after 1 RL round (7B)", "recipe": "the recipe, 7B base completions",
             "open": "open book (the ceiling)"}


def eval_rows(eval_run: Path) -> dict[str, dict[int, float]]:
    """condition -> evaluation passage -> score (mean over its questions), from the evaluation run's replies."""
    from recipe_report import grade, load

    records = [r for r in load([eval_run]) if r["pool"] == "eval"]
    grade(records, GRADER)
    out: dict[str, dict[int, float]] = {}
    for r in records:
        cond = "recipe" if r["setting"] == "recipe" else r["condition"]
        qs = r["questions"]
        out.setdefault(cond, {})[r["passage"]] = sum(q["score"] for q in qs) / len(qs)
    return out


def teacher_rows(runs: Path) -> tuple[dict[str, dict[int, float]], dict[str, dict]]:
    """row -> evaluation passage -> held-out score, for (e) the base teacher and (w), (r1), ... of the warm run;
    and the seconds per self-edit of each row."""
    from core.rundir import read_jsonl
    from pipeline.documents import load_documents

    order = {d.id: i for i, d in enumerate(load_documents(str(runs / "data/heldout.json")))}
    rows, seconds = {}, {}
    for stage, name in (("base", "e"), ("warm", "w")):
        for r, rdir in enumerate(sorted((runs / stage).glob("round_*"), key=lambda p: int(p.name.split("_")[1]))):
            recs = read_jsonl(rdir / "heldout.jsonl")
            if not recs or (stage == "base" and r > 0):
                continue
            label = name if r == 0 else f"r{r}"
            rows[label] = {order[x["context"]]: x["score"] for x in recs}
            seconds[label] = _seconds(rdir, recs)
    return rows, seconds


def _seconds(rdir: Path, recs: list[dict]) -> dict:
    """Median seconds per held-out self-edit: the teacher's sampling (recorded with each sample) and the student's
    absorption and grading (the scorer's own clock)."""
    import statistics

    from core.rundir import read_jsonl

    sampled = [x["timings"]["seconds"] for x in read_jsonl(rdir / "heldout_samples.jsonl") if "timings" in x]
    absorb = [x["timings"]["seconds"] for x in recs if x.get("timings")]
    return {"sample_median_s": statistics.median(sampled) if sampled else None,
            "absorb_median_s": statistics.median(absorb) if absorb else None}


def compare(rows: dict[str, dict[int, float]], ref: str) -> dict[str, dict]:
    from pipeline.stats import paired_bootstrap

    out = {}
    for name, ps in rows.items():
        common = sorted(set(ps) & set(rows.get(ref, {})))
        if name != ref and common:
            out[name] = paired_bootstrap([ps[i] for i in common], [rows[ref][i] for i in common]) | {"n": len(common)}
    return out


def _fmt(d: dict | None) -> str:
    return "—" if not d else f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def table(rows: dict[str, dict[int, float]], seconds: dict) -> str:
    from pipeline.stats import ratio_bootstrap

    vs_b, vs_w = compare(rows, "passage"), compare(rows, "w")
    ceiling = rows.get("open", {})
    lines = ["| row | passages | score | vs (b) passage only | vs (w) warm start | share of the ceiling | s per self-edit: sampling + absorbing (medians) |",
             "|---|---|---|---|---|---|---|"]
    for name, ps in rows.items():
        common = sorted(set(ps) & set(ceiling))
        share = ratio_bootstrap([ps[i] for i in common], [ceiling[i] for i in common]) if common and name != "open" \
            else None
        share_s = "—" if not share or share.get("mean") is None else \
            f"{share['mean']:.2f} [{share['low']:.2f}, {share['high']:.2f}]"
        label = EVAL_ROWS.get(name, {"e": "(e) SmolLM2 base teacher", "w": "(w) after the warm start"}.get(
            name, f"({name}) after ReST-EM round {name[1:]}"))
        sec = seconds.get(name) or {}
        cost = "—" if sec.get("absorb_median_s") is None else \
            f"{sec.get('sample_median_s') or 0:.0f} + {sec['absorb_median_s']:.0f}"
        lines.append(f"| {label} | {len(ps)} | {sum(ps.values()) / len(ps):.3f} | {_fmt(vs_b.get(name))} | "
                     f"{_fmt(vs_w.get(name))} | {share_s} | {cost} |")
    return "\n".join(lines) + "\n"


def rounds(runs: Path) -> str:
    from core.rundir import read_jsonl

    lines = ["| round | self-edits | non-zero rewards | positive | contexts with a winner | selected | redrawn |",
             "|---|---|---|---|---|---|---|"]
    for m in read_jsonl(runs / "warm/metrics.jsonl"):
        e = m.get("e_step")
        if not e:
            continue
        lines.append(f"| {m['round']} | {e['self_edits']} | {e.get('fraction_nonzero', 0):.0%} | "
                     f"{e['fraction_positive']:.0%} | {e.get('contexts_with_winner', '—')} / {e.get('contexts', '—')} | "
                     f"{m.get('selected', '—')} | {'yes' if e.get('redrawn') else 'no'} |")
    return "\n".join(lines) + "\n"


def report(runs: Path, eval_run: Path, out: Path | None) -> str:
    rows = eval_rows(eval_run)
    taught, seconds = teacher_rows(runs)
    rows.update(taught)
    text = (f"**Held-out: evaluation passages 0-47, graded by {GRADER}**\n\n" + table(rows, seconds)
            + "\n**ReST-EM rounds (warm run)**\n\n" + rounds(runs))
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.md").write_text(text, encoding="utf-8")
        (out / "per_passage.json").write_text(json.dumps(rows, indent=1, sort_keys=True), encoding="utf-8")
    return text
