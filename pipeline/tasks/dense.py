"""The dense knowledge metrics: how strongly the student prefers a question's gold answer over the document's other
answers, read from its log-probabilities rather than its greedy answer (student.eval.metric answer_rank /
answer_margin; `pipeline.tasks.knowledge.evaluate` calls `dense_scores`)."""

from __future__ import annotations

from core.config import EvalSettings
from pipeline.documents import Document

# Scored by the student's log-probabilities, not its greedy answer; need the engine (see `dense_scores`).
DENSE_METRICS = ("answer_rank", "answer_margin")


def _same_answer(a: list[str], b: list[str]) -> bool:
    """One normalised answer's words appear, in order, inside the other's ("silver" and "molten silver")."""
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    return bool(short) and any(long[i:i + len(short)] == short for i in range(len(long) - len(short) + 1))


def distractors(doc: Document, index: int) -> list[str]:
    """The gold answers of the document's other questions that are not a form of this question's answer or of
    another rival (the first gold of each question)."""
    from pipeline.rewards import normalize_answer

    kept = [normalize_answer(a).split() for a in doc.questions[index].answers]
    out = []
    for j, q in enumerate(doc.questions):
        if j == index:
            continue
        words = normalize_answer(q.answers[0]).split()
        if not words or any(_same_answer(words, k) for k in kept):
            continue
        kept.append(words)
        out.append(q.answers[0])
    return out


def dense_scores(engine, docs: list[Document], settings: EvalSettings) -> list[dict]:
    """Per question of `docs` (in order): how strongly the student prefers the gold answer, closed book.

    Each candidate answer is scored as the reply to the question's prompt, by its mean log-probability per token;
    the candidates are the question's golds (the best one counts) and, as rivals, the other answers of the same
    document. `answer_logprob` is the gold's own score; `answer_margin` is gold minus the best rival;
    `answer_rank` is the fraction of rivals the gold beats. The plain log-probability falls when training shifts
    the form of the answer (full sentences instead of spans) even where the greedy answer becomes right; against
    rivals of the same form that shift cancels. Without rivals (a one-question document) margin and rank are None.
    """
    from core.models import use_chat

    # After a raw prompt ending in "Answer:" a reply starts with a space, as in training text; after a chat
    # template's assistant header it does not.
    lead = "" if use_chat(engine.tokenizer, settings.use_chat_template) else " "
    items, prompts, texts = [], [], []
    for d in docs:
        for i, q in enumerate(d.questions):
            rivals = distractors(d, i)
            items.append((q, len(q.answers), rivals))
            prompt = settings.qa_prompt.format(question=q.question)
            for text in list(q.answers) + rivals:
                prompts.append(prompt)
                texts.append(text if prompt[-1:].isspace() else lead + text)
    if not items:
        return []
    ids = engine.encode_prompts(sorted(set(prompts)), settings.use_chat_template)
    by_prompt = dict(zip(sorted(set(prompts)), ids))
    scored = engine.continuation_logprobs([by_prompt[p] for p in prompts], texts, batch_size=settings.batch_size)
    means = [total / n for total, n in scored]
    out, at = [], 0
    for q, n_gold, rivals in items:
        gold = max(means[at:at + n_gold])
        rival = means[at + n_gold:at + n_gold + len(rivals)]
        at += n_gold + len(rivals)
        out.append({
            "answer_logprob": gold,
            "answer_margin": gold - max(rival) if rival else None,
            "answer_rank": sum(r < gold for r in rival) / len(rival) if rival else None,
            "rivals": len(rival),
        })
    return out
