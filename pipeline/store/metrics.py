"""Forgetting metrics over a store's score matrix, as the continual-learning literature defines them.

R[i][d] is the probe score of document d after update i (i = 0, 1, ..., T in the order the updates ran); each
document was learned at one update, l(d); b[d] is the base model's score on it. Over the documents in the
metric (those whose cell is known; a sampled probe budget leaves some cells unknown):

- acquisition: mean R[l(d)][d], what an update teaches right after it ran (the matrix's diagonal);
- retention: mean R[T][d] over documents learned before the last update (what is still known at the end);
- backward transfer (Lopez-Paz & Ranzato 2017): mean R[T][d] - R[l(d)][d] over the same documents (< 0: forgetting);
- gain kept: mean R[T][d] - b[d] over the same documents, what is left of the adaptation over the base model;
- final accuracy: mean R[T][d] over every document.
"""

from __future__ import annotations


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def forgetting_metrics(rows: list[dict[str, float]], learned_at: dict[str, int], base: dict[str, float]) -> dict:
    """`rows[i]`: document key -> score after update i; `learned_at`: document key -> the row that absorbed it."""
    if not rows:
        return {"updates": 0, "acquisition": None, "retention": None, "backward_transfer": None, "gain_kept": None,
                "final_accuracy": None, "documents": 0, "earlier_documents": 0}
    last = len(rows) - 1
    acquired = [rows[i][d] for d, i in learned_at.items() if d in rows[i]]
    earlier = [d for d, i in learned_at.items() if i < last and d in rows[last]]
    return {
        "updates": len(rows),
        "acquisition": _mean(acquired),
        "retention": _mean([rows[last][d] for d in earlier]),
        "backward_transfer": _mean([rows[last][d] - rows[learned_at[d]][d] for d in earlier
                                    if d in rows[learned_at[d]]]),
        "gain_kept": _mean([rows[last][d] - base[d] for d in earlier if d in base]),
        "final_accuracy": _mean([rows[last][d] for d in learned_at if d in rows[last]]),
        "documents": len(learned_at),
        "earlier_documents": len(earlier),
    }


def batch_matrix(rows: list[dict[str, float]], learned_at: dict[str, int]) -> list[list[float | None]]:
    """M[i][j]: the mean score, after update i, of the documents update j absorbed (None where none is known)."""
    out = []
    for row in rows:
        line = []
        for j in range(len(rows)):
            cells = [row[d] for d, at in learned_at.items() if at == j and d in row]
            line.append(_mean(cells))
        out.append(line)
    return out


def kl_bits_per_token(base_logprobs, student_logprobs) -> float:
    """KL(base || student) per position, in bits, averaged: how far the student's next-token distribution moved."""
    import math

    p = base_logprobs.exp()
    kl = (p * (base_logprobs - student_logprobs)).sum(-1)
    return float(kl.mean()) / math.log(2) if kl.numel() else 0.0




def store_metrics(state) -> dict:
    """The forgetting metrics of a store's committed state (a StoreState) over its current documents."""
    numbers = [r.update for r in state.matrix]
    index = {n: i for i, n in enumerate(numbers)}
    learned = {k: index[v.update] for k, v in state.active().items() if v.update in index}
    rows = [{k: v for k, v in r.scores.items() if k in learned} for r in state.matrix]
    out = forgetting_metrics(rows, learned, state.base)
    if state.matrix and state.matrix[-1].oracle:
        oracle_rows = rows[:-1] + [{k: v for k, v in state.matrix[-1].oracle.items() if k in learned}]
        out["oracle_retention"] = forgetting_metrics(oracle_rows, learned, state.base)["retention"]
    return out
