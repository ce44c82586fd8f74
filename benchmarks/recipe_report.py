"""Tables for `real_recipe.py` runs: every condition against passage-only (paired), its share of the open-book
ceiling (ceiling ratio, kept share), graded from the saved replies (so a grader change needs no retraining)."""

from __future__ import annotations

import json
from collections import defaultdict
from functools import partial
from pathlib import Path

GRADERS = ("contains", "token_f1", "exact_match")
LABELS = {
    "none": "no adaptation", "open": "open book (the ceiling)", "passage": "passage only",
    "implications": "implications (7B base)", "rewrite": "rewrite (7B base)", "long": "long implications (7B base)",
    "self_qa": "self-QA (7B base)", "rl1": "implications after 1 RL round (7B)",
    "recipe: rewrite": "the frozen recipe: rewrite (7B base)",
}


def grade(records: list[dict], grader: str) -> None:
    """Adds `score` to every question of every record, by `grader` (a name from pipeline.rewards)."""
    from pipeline.rewards import get_reward

    fn = get_reward(grader)
    for r in records:
        qs = r["questions"]
        if qs:
            for q, s in zip(qs, fn([q["pred"] for q in qs], [q["gold"] for q in qs])):
                q["score"] = s


def copied(reply: str, passage: str, n: int = 8) -> float:
    """The share of a reply's words that sit in a run of `n` words found verbatim in the passage."""
    words, source = reply.lower().split(), passage.lower().split()
    grams = {tuple(source[i:i + n]) for i in range(len(source) - n + 1)}
    covered = [False] * len(words)
    for i in range(len(words) - n + 1):
        if tuple(words[i:i + n]) in grams:
            covered[i:i + n] = [True] * n
    return sum(covered) / len(words) if words else 0.0


def mark_recited(records: list[dict], passage_text) -> None:
    """Marks each reply that is mostly the passage copied out (`copied` >= 0.5): an adapted student that answers by
    reciting its passage is graded right whenever the answer falls in the recited span, so the tables say how many
    right replies were recitations, beside open book's own share. `passage_text(pool, index)` gives the passage."""
    for r in records:
        text = passage_text(r["pool"], r["passage"])
        for q in r["questions"]:
            q["recited"] = copied(q["pred"], text) >= 0.5


def load(runs: list[Path]) -> list[dict]:
    from core.rundir import read_jsonl

    return [r for run in runs for f in sorted(run.glob("records*.jsonl")) for r in read_jsonl(f)]


def by_passage(records: list[dict], pool: str, setting: str, seed: int = 0) -> dict[str, dict[int, list[float]]]:
    """condition -> passage -> question scores."""
    out: dict[str, dict[int, list[float]]] = defaultdict(dict)
    for r in records:
        if r["pool"] == pool and r["setting"] == setting and r["seed"] == seed:
            out[r["condition"]][r["passage"]] = [q["score"] for q in r["questions"]]
    return out


def kept_share(answers: dict[int, list[float]], ceiling: dict[int, list[float]], passages: list[int]) -> dict:
    """Of the questions answered right open book, the share answered right closed book (pooled; bootstrap over
    passages)."""
    from pipeline.stats import ratio_bootstrap

    return ratio_bootstrap([sum(a >= 0.5 and b >= 0.5 for a, b in zip(answers[i], ceiling[i])) for i in passages],
                           [sum(b >= 0.5 for b in ceiling[i]) for i in passages])


def recited_share(records: list[dict], pool: str, setting: str, cond: str, passages: list[int]) -> dict:
    """{"right_recited": share of right replies that are recitations} on these passages (seed 0), or {} where no
    reply is right or the replies were not marked (`mark_recited`)."""
    right = [q for r in records if r["pool"] == pool and r["setting"] == setting and r["condition"] == cond
             and r["seed"] == 0 and r["passage"] in passages for q in r["questions"] if q["score"] >= 0.5]
    if not right or "recited" not in right[0]:
        return {}
    return {"right_recited": sum(q["recited"] for q in right) / len(right)}


def rows(records: list[dict], pool: str, setting: str, reference: str = "passage") -> list[dict]:
    from pipeline.stats import paired_bootstrap, ratio_bootstrap

    table = by_passage(records, pool, setting)
    ref, ceiling = table.get(reference, {}), table.get("open", {})
    out = []
    for cond, ps in table.items():
        common = sorted(set(ps) & set(ref) & set(ceiling))
        if not common:
            continue
        mean = [sum(ps[i]) / len(ps[i]) for i in common]
        row = {"condition": cond, "passages": len(common), "questions": sum(len(ps[i]) for i in common),
               "score": sum(mean) / len(mean)}
        if cond != reference:
            row["vs_" + reference] = paired_bootstrap(mean, [sum(ref[i]) / len(ref[i]) for i in common])
        if cond != "open":
            row["ceiling_ratio"] = ratio_bootstrap(mean, [sum(ceiling[i]) / len(ceiling[i]) for i in common])
            row["kept_share"] = kept_share(ps, ceiling, common)
        secs = sorted(r["seconds"] for r in records if r["pool"] == pool and r["setting"] == setting
                      and r["condition"] == cond)
        row["median_seconds"] = secs[len(secs) // 2]
        row.update(recited_share(records, pool, setting, cond, common))
        row["preamble_only"] = sum(q.get("preamble_only", False) for r in records if r["pool"] == pool
                                   and r["setting"] == setting and r["condition"] == cond for q in r["questions"])
        out.append(row)
    order = list(LABELS)
    return sorted(out, key=lambda r: order.index(r["condition"]) if r["condition"] in order else len(order))


def as_paper_rows(records: list[dict], pool: str) -> list[dict]:
    """A setting run on a form the paper's inner loop did not run in this pool (the frozen recipe in the evaluation)
    becomes a row of the paper table, condition "<setting>: <form>", paired with the same passage-only and
    open-book answers; stages 2 and 3, whose forms the paper's loop also ran, are compared in across_settings."""
    paper = {r["condition"] for r in records if r["pool"] == pool and r["setting"] == "paper"}
    return [dict(r, setting="paper", condition=f"{r['setting']}: {r['condition']}") for r in records
            if r["pool"] == pool and r["setting"] != "paper" and r["condition"] not in paper]


def passage_scores(records: list[dict], pool: str, setting: str, cond: str) -> dict[int, float]:
    """passage -> mean question score of one (setting, condition), seed 0."""
    return {r["passage"]: sum(q["score"] for q in r["questions"]) / len(r["questions"]) for r in records
            if r["pool"] == pool and r["setting"] == setting and r["condition"] == cond and r["seed"] == 0}


def _md_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def across_settings(records: list[dict], pool: str) -> list[dict]:
    """Stages 2 and 3: each (setting, form) outside the paper's inner loop against the paper's inner loop on the same
    form and against passage-only, on the passages all three share, with its share of the ceiling."""
    from pipeline.stats import paired_bootstrap, ratio_bootstrap

    scores = partial(passage_scores, records, pool)
    passage, ceiling = scores("paper", "passage"), scores("paper", "open")
    qs = {(setting, cond): per_q for setting in {r["setting"] for r in records if r["pool"] == pool}
          for cond, per_q in by_passage(records, pool, setting).items()}
    out = []
    for setting, cond in sorted({(r["setting"], r["condition"]) for r in records
                                 if r["pool"] == pool and r["setting"] != "paper"}):
        ps, paper = scores(setting, cond), scores("paper", cond)
        common = sorted(set(ps) & set(paper) & set(passage) & set(ceiling))
        if not common:
            continue
        mean = [ps[i] for i in common]
        secs = sorted(r["seconds"] for r in records if r["pool"] == pool and r["setting"] == setting
                      and r["condition"] == cond)
        out.append({**recited_share(records, pool, setting, cond, common),
                    "setting": setting, "condition": cond, "passages": len(common), "score": sum(mean) / len(mean),
                    "paper_score": sum(paper[i] for i in common) / len(common),
                    "vs_paper": paired_bootstrap(mean, [paper[i] for i in common]),
                    "vs_passage": paired_bootstrap(mean, [passage[i] for i in common]),
                    "ceiling_ratio": ratio_bootstrap(mean, [ceiling[i] for i in common]),
                    "kept_share": kept_share(qs[setting, cond], qs["paper", "open"], common),
                    "median_seconds": secs[len(secs) // 2]})
    return out


def markdown_across(table: list[dict], title: str) -> str:
    header = ["form", "setting", "passages", "score", "same form, paper's inner loop", "vs it", "vs passage only",
              "ceiling ratio", "kept share", "median s", "right replies recited"]
    return _md_table(title, header, [
        [LABELS.get(r["condition"], r["condition"]), r["setting"], str(r["passages"]), f"{r['score']:.3f}",
         f"{r['paper_score']:.3f}", _ci(r["vs_paper"]), _ci(r["vs_passage"]), _share(r["ceiling_ratio"]),
         _share(r["kept_share"]), f"{r['median_seconds']:.0f}",
         f"{r['right_recited']:.2f}" if "right_recited" in r else "—"] for r in table])


def choose(records: list[dict], pool: str, incumbent: tuple[str, str], candidates: list[tuple[str, str]]) -> dict:
    """The selection rule, fixed before stage 2 finished: on the passages every candidate shares, the (setting,
    form) with the best mean score replaces the incumbent (the simpler recipe so far) only when its paired 95%
    interval against the incumbent lies above 0; otherwise the incumbent stays. A change must earn its place."""
    from pipeline.stats import paired_bootstrap

    scores = partial(passage_scores, records, pool)
    table = {c: scores(*c) for c in [incumbent, *candidates]}
    common = sorted(set.intersection(*(set(v) for v in table.values())))
    if not common:
        raise SystemExit("no passage has every candidate yet")
    mean = {c: sum(v[i] for i in common) / len(common) for c, v in table.items()}
    best = max(candidates, key=lambda c: mean[c])
    vs = paired_bootstrap([table[best][i] for i in common], [table[incumbent][i] for i in common])
    chosen = best if mean[best] > mean[incumbent] and vs["low"] > 0 else incumbent
    return {"passages": len(common), "means": {f"{s}/{c}": round(m, 4) for (s, c), m in mean.items()},
            "best_candidate": "/".join(best), "best_vs_incumbent": vs, "chosen": "/".join(chosen)}


def _ci(d: dict | None) -> str:
    if not d or d.get("mean") is None:
        return "—"
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def _share(d: dict | None) -> str:
    if not d or d.get("mean") is None:
        return "—"
    return f"{d['mean']:.2f} [{d['low']:.2f}, {d['high']:.2f}]"


def markdown(table: list[dict], title: str) -> str:
    header = ["condition", "passages", "questions", "score", "vs passage only", "ceiling ratio", "kept share",
              "median s", "preamble-only replies", "right replies recited"]
    return _md_table(title, header, [
        [LABELS.get(r["condition"], r["condition"]), str(r["passages"]), str(r["questions"]), f"{r['score']:.3f}",
         _ci(r.get("vs_passage")), _share(r.get("ceiling_ratio")), _share(r.get("kept_share")),
         f"{r['median_seconds']:.0f}", str(r["preamble_only"]),
         f"{r['right_recited']:.2f}" if "right_recited" in r else "—"] for r in table])


def report(runs: list[Path], out: Path | None, grader: str = "contains", passage_text=None) -> str:
    records = load(runs)
    if not records:
        raise SystemExit(f"no records in {runs}")
    grade(records, grader)
    if passage_text is not None:
        mark_recited(records, passage_text)
    parts = []
    tables = {}
    for pool in sorted({r["pool"] for r in records}):
        pool_records = records + as_paper_rows(records, pool)
        for setting in sorted({r["setting"] for r in records if r["pool"] == pool}):
            t = rows(pool_records, pool, setting)
            if t:
                tables[f"{pool}/{setting}"] = t
                parts.append(markdown(t, f"{pool}, inner loop {setting}, graded by {grader}"))
        t = across_settings(records, pool)
        if t:
            tables[f"{pool}/across_settings"] = t
            parts.append(markdown_across(t, f"{pool}, absorption and inner loop against the paper's, graded by "
                                            f"{grader}"))
    text = "\n\n".join(parts)
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.md").write_text(text + "\n", encoding="utf-8")
        (out / "tables.json").write_text(json.dumps(tables, indent=1) + "\n", encoding="utf-8")
        with open(out / "per_passage.jsonl", "w", encoding="utf-8") as f:
            for r in records:
                qs = r["questions"]
                f.write(json.dumps({"key": r["key"], "n": len(qs),
                                    "score": round(sum(q["score"] for q in qs) / len(qs), 4) if qs else None,
                                    "sequences": r["train"]["sequences"], "seconds": round(r["seconds"], 1)}) + "\n")
    return text
