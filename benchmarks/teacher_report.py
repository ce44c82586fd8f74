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


def eval_rows(eval_run: Path) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, list[dict]]]]:
    """condition -> evaluation passage -> score (mean over its questions), from the evaluation run's replies; and
    the replies themselves ({question, score, pred} in the passage's question order)."""
    from recipe_report import grade, load

    records = [r for r in load([eval_run]) if r["pool"] == "eval"]
    grade(records, GRADER)
    out: dict[str, dict[int, float]] = {}
    replies: dict[str, dict[int, list[dict]]] = {}
    for r in records:
        cond = "recipe" if r["setting"] == "recipe" else r["condition"]
        qs = r["questions"]
        out.setdefault(cond, {})[r["passage"]] = sum(q["score"] for q in qs) / len(qs)
        replies.setdefault(cond, {})[r["passage"]] = [{"question": q["q"], "score": q["score"], "pred": q["pred"]}
                                                      for q in qs]
    return out, replies


def teacher_rows(runs: Path, data: Path) -> tuple[dict[str, dict[int, float]], dict[str, dict],
                                                  dict[str, dict[int, list[dict]]]]:
    """row -> evaluation passage -> held-out score, for (e) the base teacher and (w), (r1), ... of the warm run;
    the seconds per self-edit of each row; and the replies graded, where the run kept them (records written before
    seal-tt kept replies have none)."""
    from core.rundir import read_jsonl
    from pipeline.documents import load_documents

    order = {d.id: i for i, d in enumerate(load_documents(str(data / "heldout.json")))}
    rows, seconds, replies = {}, {}, {}
    for stage, name in (("base", "e"), ("warm", "w")):
        base = {b["context"]: b.get("replies") for b in read_jsonl(runs / stage / "baselines.jsonl")}
        for r, rdir in enumerate(sorted((runs / stage).glob("round_*"), key=lambda p: int(p.name.split("_")[1]))):
            recs = read_jsonl(rdir / "heldout.jsonl")
            if not recs or (stage == "base" and r > 0):
                continue
            label = name if r == 0 else f"r{r}"
            rows[label] = {order[x["context"]]: x["score"] for x in recs}
            seconds[label] = _seconds(rdir, recs)
            # an invalid self-edit was never trained: the student answers as it did before (the baseline's replies)
            got = {order[x["context"]]: (x["replies"][0] if x.get("replies") else None if x["valid"]
                                         else base.get(x["context"])) for x in recs}
            replies[label] = {i: [{"question": q["question"], "score": q["score"], "pred": q["pred"]} for q in qs]
                              for i, qs in got.items() if qs}
    return rows, seconds, replies


def _seconds(rdir: Path, recs: list[dict]) -> dict:
    """Median seconds per held-out self-edit: the teacher's sampling (recorded with each sample) and the student's
    absorption and grading (the scorer's own clock)."""
    import statistics

    from core.rundir import read_jsonl

    sampled = [x["timings"]["seconds"] for x in read_jsonl(rdir / "heldout_samples.jsonl") if "timings" in x]
    absorb = [x["timings"]["seconds"] for x in recs if x.get("timings")]
    return {"sample_median_s": statistics.median(sampled) if sampled else None,
            "absorb_median_s": statistics.median(absorb) if absorb else None}


def compare(rows: dict[str, dict[int, float]], name: str, ref: str) -> dict | None:
    """`name` - `ref` over the passages both rows have, with its paired interval and that count (None: no overlap)."""
    from pipeline.stats import paired_bootstrap

    common = sorted(set(rows.get(name, {})) & set(rows.get(ref, {})))
    if name == ref or not common:
        return None
    return paired_bootstrap([rows[name][i] for i in common], [rows[ref][i] for i in common]) | {"n": len(common)}


def _fmt(d: dict | None, n: int) -> str:
    """A paired difference; its passage count when it pairs fewer passages than the row has."""
    if not d:
        return "—"
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" + (f" (n={d['n']})" if d["n"] < n else "")


def _order(rows: dict) -> list[str]:
    """The evaluation run's rows in the benchmark's order, then the teachers': (e), (w), (r1), (r2), ..."""
    rounds = sorted((k for k in rows if k[:1] == "r" and k[1:].isdigit()), key=lambda k: int(k[1:]))
    return [k for k in (*EVAL_ROWS, "e", "w", *rounds) if k in rows]


def _label(name: str) -> str:
    return EVAL_ROWS.get(name) or {"e": "(e) SmolLM2 base teacher", "w": "(w) after the warm start"}.get(name) \
        or f"({name}) after ReST-EM round {name[1:]}"


def kept_and_recited(replies: dict[int, list[dict]], ceiling: dict[int, list[dict]],
                     passages: dict[int, str]) -> tuple[dict | None, float | None]:
    """Of the questions answered right open book, the share this row answers right closed book (pooled over its
    passages, matched by question; bootstrap over passages); and the share of its right replies that recite the
    passage (`recipe_report.copied` >= 0.5). None where there is nothing to count."""
    from recipe_report import copied, kept_share

    common = sorted(i for i in set(replies) & set(ceiling) if {q["question"] for q in replies[i]}
                    == {q["question"] for q in ceiling[i]})
    kept = None
    if common:
        mine = {i: {q["question"]: q["score"] for q in replies[i]} for i in common}
        book = {i: [q["score"] for q in ceiling[i]] for i in common}
        kept = kept_share({i: [mine[i][q["question"]] for q in ceiling[i]] for i in common}, book, common)
        kept = kept if kept.get("mean") is not None else None
    right = [(i, q) for i, qs in replies.items() for q in qs if q["score"] >= 0.5 and i in passages]
    recited = sum(copied(q["pred"], passages[i]) >= 0.5 for i, q in right) / len(right) if right else None
    return kept, recited


def table(rows: dict[str, dict[int, float]], seconds: dict, replies: dict | None = None,
          passages: dict[int, str] | None = None) -> str:
    """One line per row: its score, paired differences against (b), and -- for the teachers' rows -- against (w) and
    (c), the 7B base's implications (the moonshot: r1 >= c); the share of the open-book ceiling; the kept share and
    the right replies that recite the passage (where `replies` and the `passages`' texts are given); seconds per
    self-edit."""
    from pipeline.stats import ratio_bootstrap

    replies, passages = replies or {}, passages or {}
    ceiling = rows.get("open", {})
    lines = ["| row | passages | score | vs (b) passage only | vs (w) warm start | vs (c) 7B implications | "
             "share of the ceiling | kept share | right replies recited | s per self-edit: sampling + absorbing "
             "(medians) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in _order(rows):
        ps = rows[name]
        n = len(ps)
        common = sorted(set(ps) & set(ceiling))
        share = ratio_bootstrap([ps[i] for i in common], [ceiling[i] for i in common]) if common and name != "open" \
            else None
        share_s = "—" if not share or share.get("mean") is None else \
            f"{share['mean']:.2f} [{share['low']:.2f}, {share['high']:.2f}]"
        teacher = name not in EVAL_ROWS
        vs_w = _fmt(compare(rows, name, "w"), n) if teacher else "—"
        vs_c = _fmt(compare(rows, name, "implications"), n) if teacher else "—"
        sec = seconds.get(name) or {}
        cost = "—" if sec.get("absorb_median_s") is None else \
            f"{_s(sec.get('sample_median_s'))} + {_s(sec['absorb_median_s'])}"
        kept, recited = kept_and_recited(replies.get(name, {}), replies.get("open", {}) if name != "open" else {},
                                         passages)
        kept_s = "—" if kept is None else f"{kept['mean']:.2f} [{kept['low']:.2f}, {kept['high']:.2f}]"
        recited_s = "—" if recited is None else f"{recited:.0%}"
        lines.append(f"| {_label(name)} | {n} | {sum(ps.values()) / n:.3f} | {_fmt(compare(rows, name, 'passage'), n)} "
                     f"| {vs_w} | {vs_c} | {share_s} | {kept_s} | {recited_s} | {cost} |")
    return "\n".join(lines) + "\n"


def _s(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"


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


def report(runs: Path, data: Path, eval_run: Path, out: Path | None) -> str:
    from pipeline.documents import load_documents

    rows, replies = eval_rows(eval_run)
    taught, seconds, taught_replies = teacher_rows(runs, data)
    rows.update(taught)
    replies.update(taught_replies)
    passages = {i: d.text for i, d in enumerate(load_documents(str(data / "heldout.json")))}
    text = (f"**Held-out: evaluation passages 0-47, graded by {GRADER}**\n\n" + table(rows, seconds, replies, passages)
            + "\n**ReST-EM rounds (warm run)**\n\n" + rounds(runs))
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.md").write_text(text, encoding="utf-8")
        (out / "per_passage.json").write_text(json.dumps(rows, indent=1, sort_keys=True), encoding="utf-8")
    return text
