"""Work items and the scorer that turns one into a record: what every executor's worker runs.

A record depends only on the item and its seeds, never on what the worker did before (the LoRA is reset from the
seed, baselines are deterministic), so any worker may take any item.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from core.config import LoraSettings, ModelSettings


@dataclass
class WorkItem:
    key: str  # stable across runs: phase, round, context, sample (adapt-student per_document: the document id)
    context: Any  # the task's context (a document, an ARC task)
    sample: dict  # {"context", "sample", "prompt", "self_edit"} as the teacher wrote it (or what a task's own scorer
    # reads: adapt-student per_document's {"document", "texts"})
    seeds: list[int]
    baseline: float | None = None  # the unadapted student's score when the driver already knows it


@dataclass
class Failure:
    key: str
    tries: int
    error: str  # the last error's one-line form
    detail: str = ""  # its traceback (or the worker's death notice)
    workers: list[str] = field(default_factory=list)


class Scorer:
    """One resident student scoring work items: what every worker holds (and the local executor itself).

    `engine`: a student already loaded for `student` (the local executor's driver may hand over its own)."""

    def __init__(self, task, student: ModelSettings, lora: LoraSettings, engine=None):
        self.task = task
        self.student = student
        self.lora = lora
        self._engine = engine
        self._baselines: dict[str, float] = {}
        self._baseline_replies: dict[str, list[dict]] = {}

    @property
    def engine(self):
        if self._engine is None:
            from student.engine import StudentEngine

            self._engine = StudentEngine(self.student, self.lora)
        return self._engine

    def baseline(self, context) -> float:
        from pipeline.tasks.base import replies_of

        cid = self.task.context_id(context)
        if cid not in self._baselines:
            score = self.task.baseline(self.engine, context)
            self._baselines[cid] = float(score)
            if replies_of(score) is not None:
                self._baseline_replies[cid] = replies_of(score)
        return self._baselines[cid]

    def score(self, item: WorkItem) -> dict:
        """The item's record: every seed's score after absorbing the self-edit, and the reward against the baseline;
        where the task keeps them, the replies graded (`replies`, one list per seed; `baseline_replies` when this
        worker took the baseline)."""
        from pipeline.tasks.base import replies_of

        t0 = time.perf_counter()
        ctx, sample = item.context, item.sample
        base = item.baseline if item.baseline is not None else self.baseline(ctx)
        prepared = self.task.prepare(ctx, sample["self_edit"])
        rec = {"context": sample["context"], "sample": sample["sample"], "prompt": sample["prompt"],
               "self_edit": sample["self_edit"], "valid": prepared.valid, "invalid_reason": prepared.reason,
               "info": prepared.info, "seeds": item.seeds, "baseline": base}
        if item.baseline is None and self.task.context_id(ctx) in self._baseline_replies:
            rec["baseline_replies"] = self._baseline_replies[self.task.context_id(ctx)]
        if not prepared.valid:
            # Recorded, never trained: an unusable self-edit earns nothing.
            return {**rec, "scores": [], "rewards": [], "reward": 0.0, "timings": {"seconds": 0.0}}
        results = [self.task.score(self.engine, ctx, prepared, seed) for seed in item.seeds]
        scores = [float(s) for s in results]
        if all(replies_of(s) is not None for s in results):
            rec["replies"] = [replies_of(s) for s in results]
        # Knowledge: the gain over the unadapted student. ARC (as the paper): pass@2 itself, so a recipe that keeps
        # a task solved counts as much as one that solves it first.
        rewards = [s - base for s in scores] if getattr(self.task, "reward_is_gain", True) else scores
        return {**rec, "scores": scores, "rewards": rewards, "reward": sum(rewards) / len(rewards),
                "timings": {"seconds": round(time.perf_counter() - t0, 3)}}


def make_scorer(task, student: ModelSettings, lora: LoraSettings, engine=None) -> Scorer:
    """The scorer a worker holds for `task`: the task's own `scorer_class` where it names one (adapt-student's
    per-document absorption), else the self-edit scorer above."""
    cls = getattr(task, "scorer_class", None) or Scorer
    return cls(task, student, lora, engine=engine)


def record_failure(path, failure: Failure, name: str, **where) -> dict:
    """A work item that failed every try, appended to `path` (a run's failures.jsonl) in the one shape every
    workflow writes, and said: {"key", **where (what the item was: its document, or phase, context and sample),
    "tries", "error", "workers", "detail" (the last 4000 characters)}. `core.errors.ItemsFailed` names these
    records by their key. Returns the line."""
    from core.progress import say
    from core.rundir import append_jsonl

    line = {"key": failure.key, **where, "tries": failure.tries, "error": failure.error, "workers": failure.workers,
            "detail": failure.detail[-4000:]}
    append_jsonl(path, line)
    say(f"{name}: failed after {failure.tries} tries ({failure.error})")
    return line


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
