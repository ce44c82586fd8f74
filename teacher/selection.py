"""Which self-edits the M-step learns from: the selection policies of ReST-EM and of the SEAL paper.

A record is one scored self-edit: {"context", "sample", "reward" (mean over seeds), "valid", ...}. Policies:
  best_of_k     the single best self-edit per context (the paper)
  all_positive  every self-edit whose reward is > 0 (ReST-EM's binary-reward filter)
  top_k         the `cap` best per context (ReST-EM with a per-context cap)
`must_beat_baseline` additionally drops anything whose reward is <= 0. Ties are broken by the lower sample index,
so a rerun selects the same set; every decision that needed a tie-break is reported.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

POLICIES = ("best_of_k", "all_positive", "top_k")


@dataclass
class Selection:
    chosen: list[dict] = field(default_factory=list)
    ties: list[dict] = field(default_factory=list)  # {"context", "reward", "samples": [...], "kept": [...]}
    contexts_without_pick: list[str] = field(default_factory=list)


def select(records: list[dict], policy: str, *, cap: int = 1, must_beat_baseline: bool = True) -> Selection:
    if policy not in POLICIES:
        raise ValueError(f"unknown selection policy {policy!r}; choose from {POLICIES}")
    if policy == "top_k" and cap < 1:
        raise ValueError("top_k needs a cap of at least 1")
    by_context: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        by_context[rec["context"]].append(rec)

    out = Selection()
    for context in sorted(by_context, key=_first_seen(records)):
        pool = [r for r in by_context[context] if r.get("valid", True) and r.get("reward") is not None]
        ranked = sorted(pool, key=lambda r: (-r["reward"], r["sample"]))
        if policy == "all_positive":
            kept = [r for r in ranked if r["reward"] > 0]
        else:
            n = 1 if policy == "best_of_k" else cap
            kept = ranked[:n]
            if len(ranked) > n and ranked[n]["reward"] == ranked[n - 1]["reward"]:
                boundary = ranked[n - 1]["reward"]
                out.ties.append({
                    "context": context,
                    "reward": boundary,
                    "samples": [r["sample"] for r in ranked if r["reward"] == boundary],
                    "kept": [r["sample"] for r in kept if r["reward"] == boundary],
                })
            if must_beat_baseline:
                kept = [r for r in kept if r["reward"] > 0]
        if not kept:
            out.contexts_without_pick.append(context)
        out.chosen.extend(kept)
    return out


def _first_seen(records):
    order = {}
    for rec in records:
        order.setdefault(rec["context"], len(order))
    return order.__getitem__
