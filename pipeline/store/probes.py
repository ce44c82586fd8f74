"""Probe questions: what a store asks after every update to see what it still knows.

A document's probes are the user's questions when it has them (`--questions`, or questions inside the document
file); otherwise, when `probes.teacher_questions` is on, questions the teacher writes, flagged `"source":
"teacher"` in the store, since a teacher can be wrong about its own passage. A document with neither is absorbed
but not measured, and the update says so.
"""

from __future__ import annotations

import random
import re

from pipeline.documents import Document, Question

# A completion prompt with one worked example, read without a chat template: measured on SmolLM2-135M-Instruct, an
# instruction alone ("write 5 questions ...") gave a one-line summary, and the chat template a numbered list without
# answers; this form gave question-answer lines. The example's own pairs, and any pair whose answer the passage does
# not contain, are dropped when parsing.
QUESTION_PROMPT = ("Questions about a passage, each with its short answer taken from the passage.\n\n"
                   "Passage: The Ilmar tower was built in 1650 by Jon Tesk.\n"
                   "Question: Who built the Ilmar tower? Answer: Jon Tesk\n"
                   "Question: When was the Ilmar tower built? Answer: 1650\n\n"
                   "Passage: {passage}\nQuestion:")
# "Question: ... Answer: ..." on one line or two; "Q:"/"A:" too, and the world's tokenised "Question : x Answer : y".
_PAIR = re.compile(r"(?:^|\n)\s*(?:Q|Question)\s*[:.)-]\s*(?P<q>[^\n]+?)\s*(?:\n\s*)?(?:A|Answer)\s*[:.)-]\s*(?P<a>[^\n]+)",
                   re.IGNORECASE)


def parse_questions(text: str, limit: int | None = None) -> list[Question]:
    """(question, answer) pairs written as 'Question: ... Answer: ...'; duplicates and empty halves dropped."""
    out, seen = [], set()
    for m in _PAIR.finditer(text):
        q, a = m.group("q").strip(), m.group("a").strip().rstrip(".")
        if len(q) < 3 or not a or q.lower() in seen:
            continue
        seen.add(q.lower())
        out.append(Question(q if q.endswith("?") else q, (a,)))
        if limit is not None and len(out) >= limit:
            break
    return out


def question_prompt(doc: Document) -> str:
    return QUESTION_PROMPT.format(passage=" ".join(doc.text.split()))


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def grounded(questions: list[Question], doc: Document) -> list[Question]:
    """The pairs whose answer the passage itself contains (a small teacher also repeats the prompt's example)."""
    passage = f" {_normal(doc.text)} "
    return [q for q in questions if q.answers and f" {_normal(q.answers[0])} " in passage]


def teacher_probes(backend, docs: list[Document], settings, generation, seeds: list[int]) -> dict[str, list[Question]]:
    """The teacher's questions per document (greedy, so a rerun writes the same ones), grounded in the passage."""
    from dataclasses import replace

    gen = replace(generation, num_samples=1, temperature=0.0, max_new_tokens=settings.max_new_tokens,
                  use_chat_template="never")
    out = {}
    for doc, seed in zip(docs, seeds):
        (samples,) = backend.sample([question_prompt(doc)], gen, [seed])
        text = "Question:" + samples[0].text.split("\nPassage:")[0]
        out[doc.id] = grounded(parse_questions(text), doc)[: settings.per_document]
    return out


def sample_earlier(keys: list[str], budget: int | None, seed: int) -> list[str]:
    """The earlier documents whose probes an update scores: all of them, or a seeded sample of `budget`."""
    if budget is None or budget >= len(keys):
        return list(keys)
    rng = random.Random(seed)
    return sorted(rng.sample(list(keys), budget), key=keys.index)
