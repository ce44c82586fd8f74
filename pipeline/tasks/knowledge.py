"""Knowledge incorporation: a self-edit is text about a document; the student must then answer without it.

Turning a completion into training sequences follows the paper's switches: one sequence per line (`lines`), per
blank-line-separated block such as a question-answer pair (`blocks`), or the whole completion (`whole`); each
optionally prefixed with the document's title; the passage itself optionally added as one more sequence.
Before splitting, a chain-of-thought completion loses its reasoning (`self_edit.strip_reasoning`); after it, at most
`self_edit.max_sequences` sequences are kept, the first ones, as the paper does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from core.config import EvalSettings, SelfEditSettings
from core.errors import UserError
from pipeline.documents import Document
from pipeline.tasks.dense import DENSE_METRICS, dense_scores
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
    elif settings.split == "qa":
        pieces = _qa_pairs(completion)
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


_ANSWER_START = re.compile(r"^\s*(?:\*\*)?A(?:nswer)?\s*\d*\s*(?:\*\*)?\s*[:.)]", re.IGNORECASE)


def _qa_pairs(completion: str) -> list[str]:
    """Question-answer pairs, each one sequence: blocks split on blank lines, an answer block joined to the question
    block before it (writers put the blank line between a question and its answer, or only between pairs)."""
    pairs: list[str] = []
    for block in (b.strip() for b in re.split(r"\n\s*\n", completion.strip())):
        if not block:
            continue
        answered = pairs and any(_ANSWER_START.match(line) for line in pairs[-1].splitlines())
        if pairs and _ANSWER_START.match(block) and not answered:
            pairs[-1] = f"{pairs[-1]}\n{block}"
        else:
            pairs.append(block)
    return pairs


_QUESTION_LABEL = re.compile(r"^\s*(?:\*\*)?Q(?:uestion)?\s*\d*\s*(?:\*\*)?\s*[:.)]\s*", re.IGNORECASE)


def pair_questions(sequences: list[str]) -> list[str]:
    """The questions of a self-edit's question-answer pairs (split="qa"): each pair's lines before its answer,
    without a "Question 2:" label. Sequences that are not pairs give none."""
    out = []
    for seq in sequences:
        lines = seq.splitlines()
        at = next((i for i, line in enumerate(lines) if i and _ANSWER_START.match(line)), None)
        if at is not None:
            question = _QUESTION_LABEL.sub("", " ".join(line.strip() for line in lines[:at])).strip()
            if question:
                out.append(question)
    return out


def exchanges(engine, doc: Document, questions: list[str], settings: EvalSettings) -> list[str]:
    """Question-answer exchanges about `doc` for the student to learn: `questions` (a teacher's, never the
    evaluation's) answered by the student itself with the passage in view and its adapter at zero, each written as
    the closed-book turn it should give (through the chat template when the student has one). Distilled with the
    passage as context (student.train.objective=context_distill), they teach what the model already answers
    open-book."""
    from core.models import use_chat

    if not questions:
        return []
    prompts = [settings.open_book_prompt.format(passage=with_title(doc, doc.text, _TITLED), question=q)
               for q in questions]
    answers = engine.reply(prompts, use_chat_template=settings.use_chat_template,
                           max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                           until=settings.answer_until)
    tok = engine.tokenizer
    out = []
    for q, a in zip(questions, answers):
        if not a.strip():
            continue
        asked = settings.qa_prompt.format(question=q)
        if use_chat(tok, settings.use_chat_template):
            out.append(tok.apply_chat_template([{"role": "user", "content": asked},
                                                {"role": "assistant", "content": a}], tokenize=False))
        else:
            out.append(f"{asked} {a}")
    return out


def split_self_edit(completion: str, settings: SelfEditSettings) -> list[str]:
    """The training sequences a completion yields on its own (no title, no passage)."""
    return split_self_edit_report(completion, settings)[0]


def with_title(doc: Document, text: str, settings: SelfEditSettings) -> str:
    return f"{doc.title}\n{text}" if settings.prefix_title and doc.title else text


def distill_context(passage: Document) -> str:
    """The passage that student.train.objective=context_distill shows the student it distils from, for a text
    written about `passage`: one helper, so that adapt-student, the store and ReST-EM's inner loop distil from the
    same prompt. Titled, as the open-book prompt shows a passage (and as benchmarks/real_recipe.py chose the recipe)."""
    return f"{passage.title}\n{passage.text}" if passage.title else passage.text


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
# metric "auto": the grader for how much of a reply the student is read by (StudentEngine.reply_until). A whole chat
# turn is graded by contains_numeric, which agreed best with human labels on such replies (benchmarks/grader_check);
# a one-line answer (the synthetic world's students) keeps token_f1.
AUTO_METRICS = {"turn": "contains_numeric", "line": "token_f1"}


def resolve_metric(settings: EvalSettings, engine=None, *, tokenizer=None) -> EvalSettings:
    """`settings` with metric "auto" made concrete for the student `engine` (or, without one, the student's
    `tokenizer`): contains_numeric when it is read by whole turns, else token_f1. Any other metric is kept."""
    if settings.metric != "auto":
        return settings
    if engine is not None:
        reads = engine.reply_until(settings.use_chat_template, settings.answer_until)
    elif tokenizer is not None:
        from core.models import reply_until

        reads = reply_until(tokenizer, settings.use_chat_template, settings.answer_until)
    else:
        raise ValueError("student.eval.metric is auto, which depends on how the student is read: "
                         "resolve it with the student's engine or tokenizer")
    return replace(settings, metric=AUTO_METRICS[reads])


def metric_name(settings: EvalSettings, model) -> str:
    """The metric `settings` grade the student `model` (ModelSettings) with; "auto" resolved from its tokenizer
    alone (no weights loaded)."""
    if settings.metric != "auto":
        return settings.metric
    from core.models import load_tokenizer

    tokenizer = load_tokenizer(model.path, trust_remote_code=model.trust_remote_code)
    return resolve_metric(settings, tokenizer=tokenizer).metric


class Grader:
    """The primary reward plus the free local metrics, computed together for reports. `engine`: the student the
    grader grades, which metric "auto" needs (see `resolve_metric`); `metric` is always the resolved name."""

    def __init__(self, settings: EvalSettings, *, engine=None):
        from pipeline.rewards import get_reward

        if settings.metric == "auto":
            if engine is None:
                raise ValueError("student.eval.metric is auto, which depends on how the student is read: build the "
                                 "Grader with engine=<the student>, or pass settings through resolve_metric first")
            settings = resolve_metric(settings, engine)
        self.metric = settings.metric
        self.local = {name: get_reward(name) for name in LOCAL_METRICS}
        self.dense = settings.metric in DENSE_METRICS
        if self.dense:
            self.primary = None  # filled per question by `evaluate`, which has the engine
        elif settings.metric == "llm_judge":
            self.primary = get_reward("llm_judge", model=settings.judge_model)
        else:
            self.primary = self.local.get(settings.metric) or get_reward(settings.metric)

    def __call__(self, questions: list[str], predictions: list[str], references: list[list[str]]):
        metrics = {name: fn(predictions, references) for name, fn in self.local.items()}
        if self.dense:
            return None, metrics
        if self.metric in metrics:
            primary = metrics[self.metric]
        else:
            primary = self.primary(predictions, references, questions=questions)
            metrics[self.metric] = primary
        return primary, metrics


def evaluate(engine, docs: list[Document], settings: EvalSettings, grader: Grader, *,
             open_book: bool = False) -> list[QuestionResult]:
    """Ask the student every question of `docs` and grade the answers: closed book, or with `open_book` the
    document's passage in the prompt (`settings.open_book_prompt`; the caller turns the adapter off for the
    ceiling). Dense metrics are closed-book only."""
    items = [(d, q) for d in docs for q in d.questions]
    if not items:
        return []
    questions = [q.question for _, q in items]
    refs = [list(q.answers) for _, q in items]
    if open_book:
        prompts = [settings.open_book_prompt.format(passage=with_title(d, d.text, _TITLED), question=q.question)
                   for d, q in items]
    else:
        prompts = [settings.qa_prompt.format(question=q) for q in questions]
    preds = engine.reply(prompts, use_chat_template=settings.use_chat_template,
                         max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                         until=settings.answer_until)
    primary, metrics = grader(questions, preds, refs)
    if engine.reply_until(settings.use_chat_template, settings.answer_until) == "turn":
        metrics["preamble_only"] = [float(is_preamble_only(p)) for p in preds]
    if grader.dense and not open_book:
        dense = dense_scores(engine, docs, settings)
        for name in ("answer_logprob", *DENSE_METRICS):
            metrics[name] = [float("nan") if s[name] is None else s[name] for s in dense]
        primary = metrics[grader.metric]
    return [
        QuestionResult(d.id, q.question, list(q.answers), p, float(s), {k: float(v[i]) for k, v in metrics.items()})
        for i, ((d, q), p, s) in enumerate(zip(items, preds, primary))
    ]


_TITLED = SelfEditSettings(prefix_title=True)


def is_preamble_only(reply: str) -> bool:
    """A reply that announces an answer and stops ("The answer to the question is:"): cut by the token cap, or
    (read to the first line only) before its answer came."""
    return reply.rstrip().endswith(":")


def summarize(results: list[QuestionResult]) -> dict:
    """Micro average over questions of the primary score and every metric (empty -> None)."""
    if not results:
        return {"questions": 0, "score": None}
    out = {"questions": len(results), "score": _nanmean([r.score for r in results])}
    for name in results[0].metrics:
        out[name] = _nanmean([r.metrics[name] for r in results])
    return out


def _nanmean(values: list[float]) -> float | None:
    """The mean over defined values: a dense metric is undefined (NaN) for a question with no rival answer."""
    kept = [v for v in values if v == v]
    return sum(kept) / len(kept) if kept else None


class KnowledgeTask:
    """Knowledge incorporation as a `SelfEditTask`: contexts are documents with questions."""

    name = "knowledge"

    def __init__(self, self_edit: SelfEditSettings, train, eval_settings: EvalSettings):
        self.self_edit = self_edit
        self.train = train
        self.eval = eval_settings
        self.template = load_template(self_edit.prompt)
        # With metric "auto" the grader waits for the student (`grader_for`): the metric depends on how it is read.
        self._grader = None if eval_settings.metric == "auto" else Grader(eval_settings)

    @property
    def grader(self) -> Grader:
        """The grader; with metric "auto", only once a student has been scored (else a ValueError)."""
        if self._grader is None:
            self._grader = Grader(self.eval)
        return self._grader

    def grader_for(self, engine) -> Grader:
        """The grader for the student `engine` (metric "auto" resolved for it)."""
        if self._grader is None or resolve_metric(self.eval, engine).metric != self._grader.metric:
            self._grader = Grader(self.eval, engine=engine)
        return self._grader

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
        grader = self.grader_for(engine)
        results = evaluate(engine, [doc], self.eval, grader)
        if not results:
            raise ValueError(f"document {doc.id} has no questions to score")
        score = _nanmean([r.score for r in results])
        if score is None:
            raise UserError(f"document {doc.id!r}: student.eval.metric={grader.metric} needs at least two "
                            "questions with different answers (the other answers are its rivals)")
        from pipeline.tasks.base import Scored

        return Scored(score, [{"question": r.question, "gold": r.answers, "pred": r.prediction, "score": r.score}
                              for r in results])

    def baseline(self, engine, doc: Document) -> float:
        engine.reset()
        return self._mean_score(engine, doc)

    def score(self, engine, doc: Document, prepared, seed: int) -> float:
        engine.reset(seed=seed)
        texts = prepared.payload
        contexts = [distill_context(doc)] * len(texts) if self.train.objective == "context_distill" else None
        engine.train_texts(texts, self.train, seed=seed, contexts=contexts)
        return self._mean_score(engine, doc)
