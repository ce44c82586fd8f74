"""What an update measures: probe scores per document version, the fall of the earlier documents' scores (what the
gate judges), the probes an update broke, and the fixed text the drift from the base is measured on."""

from __future__ import annotations

from pathlib import Path

from core.errors import UserError
from pipeline.documents import Question, load_documents


def items(probes: list[tuple[str, Question]], scores: list[float]) -> dict[str, list[float]]:
    """Per document key, its probes' scores in probe order."""
    out: dict[str, list[float]] = {}
    for (k, _), s in zip(probes, scores):
        out.setdefault(k, []).append(s)
    return out


def doc_means(items: dict[str, list[float]]) -> dict[str, float]:
    return {k: sum(v) / len(v) for k, v in items.items() if v}


def macro(items: dict[str, list[float]]) -> float | None:
    means = list(doc_means(items).values())
    return sum(means) / len(means) if means else None


def drop(before: dict[str, list[float]], after: dict[str, list[float]]) -> float | None:
    """How far the earlier documents' mean probe score fell (macro over documents scored both times)."""
    common = [k for k in after if k in before]
    if not common:
        return None
    return macro({k: before[k] for k in common}) - macro({k: after[k] for k in common})


def broken(probes, before: dict[str, list[float]], after: dict[str, list[float]]) -> list[dict]:
    """The probes right before and wrong after."""
    out, seen = [], {}
    for k, q in probes:
        i = seen.get(k, 0)
        seen[k] = i + 1
        if before.get(k) and after.get(k) and before[k][i] > 0.5 >= after[k][i]:
            out.append({"document": k, "question": q.question, "answers": list(q.answers)})
    return out


def drift_ids(tokenizer, text_file: str | None, max_tokens: int) -> list[int]:
    """The token ids the drift is measured on: `drift.text`, else the packaged sample documents."""
    if text_file:
        p = Path(text_file).expanduser()
        if not p.is_file():
            raise UserError(f"drift.text: file not found: {p}")
        text = p.read_text(encoding="utf-8")
    else:
        from pipeline.samples import sample_docs

        text = "\n\n".join(d.text for d in load_documents(sample_docs()))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    if len(ids) < 2:
        raise UserError("drift.text has fewer than 2 tokens")
    return ids
