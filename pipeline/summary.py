"""What `adapt-student` prints when it ends: the counts, each grader before and after, the open-book ceiling where the
run measured it, and (on request) every question's answer before and after."""

from __future__ import annotations

RIGHT = 0.5  # a score counts as right from here (pipeline/tasks/ceiling.py)


def _interval(x: dict) -> str:
    if x.get("mean") is None:
        return "n/a"
    bounds = f" [{x['low']:.2f}, {x['high']:.2f}]" if x.get("low") is not None and x.get("high") is not None else ""
    return f"{x['mean']:.2f}{bounds}"


def _ceiling_lines(report: dict) -> list[str]:
    c = report.get("ceiling")
    if not c or not c.get("documents"):
        return []
    return [f"open book (the ceiling): {c['open_book']:.3f}  closed book after: {c['closed_book']:.3f}  "
            f"share of the ceiling: {_interval(c['ceiling_ratio'])}",
            f"kept share: {c['right_both']} of the {c['right_open_book']} questions right open book are right closed "
            f"book after ({_interval(c['kept_share'])})"]


def _right(score) -> bool:
    return score is not None and score == score and score >= RIGHT  # None or NaN (a dense metric's gap): not right


def _verdict(score) -> str:
    return "right" if _right(score) else "wrong"


def answer_lines(report: dict) -> list[str]:
    """Each question, its gold answers, and the student's reply before and after with the primary grader's verdict."""
    lines = []
    for q in report.get("questions", []):
        lines += [f"Q: {q['question']}  (gold: {' | '.join(q['answers'])})",
                  f"   before [{_verdict(q['score_before'])}]: {q['before']}",
                  f"   after  [{_verdict(q['score_after'])}]: {q['after']}"]
    return lines


def summary_lines(report: dict, output: str, *, answers: bool = False) -> list[str]:
    b, a = report.get("before") or {}, report.get("after") or {}
    lines = [f"output: {output}"]
    if report.get("task") != "knowledge":
        return lines + ([str(report["summary"])] if "summary" in report else [])
    lines.append(f"documents: {report['documents']}  self-edits: {report['self_edits']}  "
                 f"training sequences: {report['training_sequences']}")
    if report.get("passages", {}).get("split_documents"):
        split = report["passages"]["split_documents"]
        lines.append(f"split: {len(split)} documents into {sum(s['passages'] for s in split.values())} passages "
                     f"of <= {report['passages']['passage_tokens']} tokens")
    if answers:
        lines += answer_lines(report)
    if b.get("questions"):
        # The primary metric first, then the local graders it is not (token F1 punishes every extra word of a
        # full-sentence answer; they are context, not the verdict).
        names = [report["metric"]] + [m for m in ("contains", "token_f1", "exact_match") if m != report["metric"]]
        for m in names:
            if b.get(m if m != report["metric"] else "score") is not None:
                bv, av = (b["score"], a["score"]) if m == report["metric"] else (b[m], a[m])
                right = ""
                if m == report["metric"]:
                    qs = report.get("questions", [])
                    right = (f"; right: {sum(_right(q['score_before']) for q in qs)} before, "
                             f"{sum(_right(q['score_after']) for q in qs)} after")
                lines.append(f"{m} before: {bv:.3f}  after: {av:.3f}  ({b['questions']} questions{right})")
    return lines + _ceiling_lines(report)
