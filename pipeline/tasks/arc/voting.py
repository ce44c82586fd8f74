"""Vote predictions made under several transforms into two attempts; score pass@2.

Tie-break: candidates with equal vote counts keep the order in which they first appeared in the
predictions. Callers list the untransformed prediction first (``voting_transforms`` starts with the
identity), so with no majority the plain prediction is attempt 1. No randomness, no dependence on
hash order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .augment import NotInvertibleError, Transform
from .data import Grid, as_grid, is_valid_grid


def _grid(g: Any) -> Grid:
    return as_grid(g, "grid")


def invert_predictions(pairs: Iterable[tuple[Transform, Any]]) -> list[Grid]:
    """Map each ``(transform, prediction)`` back to the original frame.

    Predictions that are None (unparseable), not valid grids, or not in the image of their
    transform are dropped: a vote from an inconsistent prediction is noise.
    """
    out = []
    for transform, pred in pairs:
        if pred is None or not is_valid_grid(pred):
            continue
        try:
            back = transform.inverse(_grid(pred))
        except NotInvertibleError:
            continue
        if is_valid_grid(back):
            out.append(back)
    return out


def vote(candidates: Iterable[Any], attempts: int = 2) -> list[Grid]:
    """The ``attempts`` most frequent distinct grids, most votes first (ties: first seen first).

    Invalid grids and None are ignored; fewer than ``attempts`` grids come back when fewer distinct
    candidates exist.
    """
    counts: Counter[Grid] = Counter()
    first_seen: dict[Grid, int] = {}
    for i, c in enumerate(candidates):
        if c is None or not is_valid_grid(c):
            continue
        g = _grid(c)
        counts[g] += 1
        first_seen.setdefault(g, i)
    ranked = sorted(counts, key=lambda g: (-counts[g], first_seen[g]))
    return ranked[:attempts]


def vote_transformed(pairs: Iterable[tuple[Transform, Any]], attempts: int = 2) -> list[Grid]:
    """``invert_predictions`` then ``vote``."""
    return vote(invert_predictions(pairs), attempts)


def _attempt_grids(entry: Any) -> list[Grid]:
    if isinstance(entry, Mapping):  # a submission item {"attempt_1": ..., "attempt_2": ...}
        entry = [entry[k] for k in ("attempt_1", "attempt_2") if k in entry]
    grids = [_grid(g) for g in entry if g is not None and is_valid_grid(g)]
    if len(grids) > 2:
        raise ValueError(f"pass@2 takes at most 2 attempts per test input, got {len(grids)}")
    return grids


def pass_at_2(attempts: Sequence[Any], solutions: Sequence[Any]) -> bool:
    """True when every test output equals one of its (at most 2) attempts.

    ``attempts[i]`` is a list of grids or a submission item for test input ``i``; grids may be lists
    or tuples. A task with no test outputs cannot pass.
    """
    if len(attempts) != len(solutions):
        raise ValueError(f"{len(attempts)} attempt lists for {len(solutions)} test outputs")
    if not solutions:
        return False
    return all(_grid(sol) in _attempt_grids(att) for att, sol in zip(attempts, solutions))


def score_submission(
    submission: Mapping[str, Sequence[Any]], solutions: Mapping[str, Sequence[Any]]
) -> dict[str, bool]:
    """pass@2 per task of ``solutions``; a task missing from the submission fails."""
    return {
        task_id: task_id in submission and pass_at_2(submission[task_id], sols)
        for task_id, sols in solutions.items()
    }
