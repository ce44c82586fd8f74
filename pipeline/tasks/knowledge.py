"""Knowledge incorporation: a self-edit is text about a document; the student must then answer without it.

Turning a completion into training sequences follows the paper's switches: one sequence per line (`lines`), per
blank-line-separated block such as a question-answer pair (`blocks`), or the whole completion (`whole`); each
optionally prefixed with the document's title; the passage itself optionally added as one more sequence.
Before splitting, a chain-of-thought completion loses its reasoning (`self_edit.strip_reasoning`); after it, at most
`self_edit.max_sequences` sequences are kept, the first ones, as the paper does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from core.config import EvalSettings, SelfEditSettings
from pipeline.documents import Document
from teacher.prompts import COT_MARKER, REASONING_TEMPLATES, load_template, render

_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")
_COT_MARKER = re.compile(re.escape(COT_MARKER), re.IGNORECASE)


def teacher_prompt(doc: Document, template: str) -> str:
    return render(template, title=doc.title, passage=doc.text)


def teacher_prompts(docs: list[Document], settings: SelfEditSettings) -> list[str]:
    template = load_template(settings.prompt)
    return [teacher_prompt(d, template) for d in docs]


def strips_reasoning(settings: SelfEditSettings) -> bool:
    """Whether completions under these settings start with reasoning to drop (see SelfEditSettings)."""
    if settings.strip_reasoning == "auto":
        return settings.prompt in REASONING_TEMPLATES
    return settings.strip_reasoning == "always"


def split_self_edit_report(completion: str, settings: SelfEditSettings) -> tuple[list[str], dict]:
    """The training sequences a completion yields on its own (no title, no passage), and what was cut:
    {"sequences": kept, "dropped_over_cap": cut by max_sequences, "reasoning_stripped": bool,
    "marker_missing": bool (reasoning was to be stripped but the completion has no marker; it is kept whole)}."""
    stripped = missing = False
    if strips_reasoning(settings):
        last = None
        for last in _COT_MARKER.finditer(completion):
            pass
        if last is None:
            missing = True
        else:
            completion, stripped = completion[last.end():], True
    if settings.split == "whole":
        pieces = [completion]
    elif settings.split == "blocks":
        pieces = re.split(r"\n\s*\n", completion)
    else:
        pieces = [_LIST_MARKER.sub("", line) for line in completion.splitlines()]
    kept = [p.strip() for p in pieces if len(p.strip()) >= settings.min_chars]
    dropped = 0
    if settings.max_sequences and len(kept) > settings.max_sequences:
        dropped = len(kept) - settings.max_sequences
        kept = kept[: settings.max_sequences]
    report = {"sequences": len(kept), "dropped_over_cap": dropped, "reasoning_stripped": stripped,
              "marker_missing": missing}
    return kept, report


def split_self_edit(completion: str, settings: SelfEditSettings) -> list[str]:
    """The training sequences a completion yields on its own (no title, no passage)."""
    return split_self_edit_report(completion, settings)[0]


def with_title(doc: Document, text: str, settings: SelfEditSettings) -> str:
    return f"{doc.title}\n{text}" if settings.prefix_title and doc.title else text


def training_texts(doc: Document, completions: list[str], settings: SelfEditSettings) -> list[str]:
    texts = [with_title(doc, t, settings) for c in completions for t in split_self_edit(c, settings)]
    if settings.include_passage:
        texts.append(with_title(doc, doc.text, settings))
    return texts


@dataclass
class QuestionResult:
    document: str
    question: str
    answers: list[str]
    prediction: str
    score: float
    metrics: dict[str, float] = field(default_factory=dict)


LOCAL_METRICS = ("exact_match", "token_f1", "contains")


class Grader:
    """The primary reward plus the free local metrics, computed together for reports."""

    def __init__(self, settings: EvalSettings):
        from pipeline.rewards import get_reward

        self.metric = settings.metric
        self.local = {name: get_reward(name) for name in LOCAL_METRICS}
        if settings.metric == "llm_judge":
            self.primary = get_reward("llm_judge", model=settings.judge_model)
        else:
            self.primary = self.local[settings.metric]

    def __call__(self, questions: list[str], predictions: list[str], references: list[list[str]]):
        metrics = {name: fn(predictions, references) for name, fn in self.local.items()}
        if self.metric in metrics:
            primary = metrics[self.metric]
        else:
            primary = self.primary(predictions, references, questions=questions)
            metrics[self.metric] = primary
        return primary, metrics


def evaluate(engine, docs: list[Document], settings: EvalSettings, grader: Grader) -> list[QuestionResult]:
    """Ask the student every question of `docs` (closed book) and grade the answers."""
    items = [(d, q) for d in docs for q in d.questions]
    if not items:
        return []
    questions = [q.question for _, q in items]
    refs = [list(q.answers) for _, q in items]
    preds = engine.answer(
        questions,
        qa_prompt=settings.qa_prompt,
        use_chat_template=settings.use_chat_template,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
    )
    primary, metrics = grader(questions, preds, refs)
    return [
        QuestionResult(d.id, q.question, list(q.answers), p, float(s), {k: float(v[i]) for k, v in metrics.items()})
        for i, ((d, q), p, s) in enumerate(zip(items, preds, primary))
    ]


def summarize(results: list[QuestionResult]) -> dict:
    """Micro average over questions of the primary score and every metric (empty -> None)."""
    if not results:
        return {"questions": 0, "score": None}
    out = {"questions": len(results), "score": sum(r.score for r in results) / len(results)}
    for name in results[0].metrics:
        out[name] = sum(r.metrics[name] for r in results) / len(results)
    return out


class KnowledgeTask:
    """Knowledge incorporation as a `SelfEditTask`: contexts are documents with questions."""

    name = "knowledge"

    def __init__(self, self_edit: SelfEditSettings, train, eval_settings: EvalSettings):
        self.self_edit = self_edit
        self.train = train
        self.eval = eval_settings
        self.template = load_template(self_edit.prompt)
        self.grader = Grader(eval_settings)

    def context_id(self, doc: Document) -> str:
        return doc.id

    def prompt(self, doc: Document) -> str:
        return teacher_prompt(doc, self.template)

    def prepare(self, doc: Document, completion: str):
        from pipeline.tasks.base import Prepared

        pieces, report = split_self_edit_report(completion, self.self_edit)
        own = [with_title(doc, t, self.self_edit) for t in pieces]
        if not own:
            return Prepared(False, reason="no training text after splitting", info=report)
        texts = own + ([with_title(doc, doc.text, self.self_edit)] if self.self_edit.include_passage else [])
        return Prepared(True, payload=texts, info=report)

    def _mean_score(self, engine, doc: Document) -> float:
        results = evaluate(engine, [doc], self.eval, self.grader)
        if not results:
            raise ValueError(f"document {doc.id} has no questions to score")
        return sum(r.score for r in results) / len(results)

    def baseline(self, engine, doc: Document) -> float:
        engine.reset()
        return self._mean_score(engine, doc)

    def score(self, engine, doc: Document, prepared, seed: int) -> float:
        engine.reset(seed=seed)
        engine.train_texts(prepared.payload, self.train, seed=seed)
        return self._mean_score(engine, doc)
