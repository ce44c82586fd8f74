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

QUESTION_PROMPT = ("Write {n} short questions about the passage below, each followed by its answer in a few words, "
                   "one pair per line, as\nQuestion: ... Answer: ...\n\n{title}\n{passage}\n")

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


def question_prompt(doc: Document, n: int) -> str:
    return QUESTION_PROMPT.format(n=n, title=doc.title, passage=doc.text)


def teacher_probes(backend, docs: list[Document], settings, generation, seeds: list[int]) -> dict[str, list[Question]]:
    """The teacher's questions per document (greedy, so a rerun writes the same ones)."""
    from dataclasses import replace

    gen = replace(generation, num_samples=1, temperature=0.0, max_new_tokens=settings.max_new_tokens)
    out = {}
    for doc, seed in zip(docs, seeds):
        (samples,) = backend.sample([question_prompt(doc, settings.per_document)], gen, [seed])
        out[doc.id] = parse_questions(samples[0].text, settings.per_document)
    return out


def sample_earlier(keys: list[str], budget: int | None, seed: int) -> list[str]:
    """The earlier documents whose probes an update scores: all of them, or a seeded sample of `budget`."""
    if budget is None or budget >= len(keys):
        return list(keys)
    rng = random.Random(seed)
    return sorted(rng.sample(list(keys), budget), key=keys.index)
