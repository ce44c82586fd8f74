"""How much of what a student answers with the passage in view it answers without it.

Two figures, both over the same documents (passages) and questions:

- the **ceiling ratio**: closed-book accuracy ÷ open-book accuracy, each a macro average over documents; interval by
  resampling documents;
- the **kept share**: of the questions answered right open-book, the share also answered right closed-book (pooled
  over questions; interval by resampling documents). The stricter one: a closed-book hit on a question the model
  misses with the passage in view raises the ratio but not the share.

A score counts as right at >= 0.5 (the string graders give 0 or 1; token F1 is cut there).
"""

from __future__ import annotations

from collections import defaultdict

from pipeline.stats import ratio_bootstrap

RIGHT = 0.5


def _by_document(results) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for r in results:
        out[r.document].append(r)
    return out


def ceiling_report(closed, open_book) -> dict:
    """`closed` and `open_book`: QuestionResults of the same questions in the same order (knowledge.evaluate)."""
    if [(r.document, r.question) for r in closed] != [(r.document, r.question) for r in open_book]:
        raise ValueError("closed-book and open-book results must cover the same questions in the same order")
    c, o = _by_document(closed), _by_document(open_book)
    docs = list(c)
    if not docs:
        return {"documents": 0}
    closed_mean = [sum(r.score for r in c[d]) / len(c[d]) for d in docs]
    open_mean = [sum(r.score for r in o[d]) / len(o[d]) for d in docs]
    kept = [sum(x.score >= RIGHT and y.score >= RIGHT for x, y in zip(c[d], o[d])) for d in docs]
    right_open = [sum(y.score >= RIGHT for y in o[d]) for d in docs]
    return {
        "documents": len(docs),
        "questions": len(closed),
        "open_book": sum(open_mean) / len(docs),
        "closed_book": sum(closed_mean) / len(docs),
        "ceiling_ratio": ratio_bootstrap(closed_mean, open_mean),
        "kept_share": ratio_bootstrap(kept, right_open),
        "right_open_book": sum(right_open),
        "right_both": sum(kept),
    }
