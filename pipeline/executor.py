"""Executors: where the inner loops of an E-step, a held-out evaluation or a per-document adaptation run.

A *work item* is one self-edit to score: (context, self-edit, seeds) under a stable key. A worker holds one resident
student (a `Scorer`) and turns items into records; what a record holds depends only on the item and its seeds, never
on what the worker did before (the LoRA is reset from the seed, baselines are deterministic), so any worker may take
any item. The driver alone writes records, as results arrive, so a rerun skips every key already written.
A task may name its own `scorer_class` (pipeline/work.py `make_scorer`): adapt-student's per-document mode has one
document per item, and its worker returns the record with the trained adapter's tensors for the driver to save.

- `LocalExecutor` (the default): this process, one item after another: what ReST-EM always did.
- `pipeline.ray_executor.RayExecutor`: one worker per device on a Ray cluster, a few items in flight per worker,
  restarts and retries (`executor.kind=ray`).

Both retry an item that raises (up to `executor.max_tries`) and then report it as failed with its error, so one bad
item does not end a round and is never scored as "wrong". A `UserError` (a mistake in the config or data) is not
retried: it ends the command as always.
"""

from __future__ import annotations

import traceback
from typing import Iterator

from core.config import ExecutorSettings, LoraSettings, ModelSettings
from core.errors import UserError
from pipeline.work import Failure, Scorer, WorkItem, make_scorer, one_line


class LocalExecutor:
    """Items one after another in this process, on one resident student (kept between phases and rounds while its
    weights stay the same).

    `engine`: a student this process already holds (adapt-student's, which may also have been the teacher); items
    for that student are scored on it instead of a second copy."""

    name = "local"

    def __init__(self, task, lora: LoraSettings, settings: ExecutorSettings | None = None, *, engine=None):
        self.task = task
        self.lora = lora
        self.settings = settings or ExecutorSettings()
        self._engine = engine
        self._scorer: Scorer | None = None

    def scorer(self, student: ModelSettings) -> Scorer:
        if self._scorer is None or self._scorer.student.path != student.path:
            self._scorer = None
            import gc

            gc.collect()
            engine = self._engine if self._engine is not None and self._engine.settings == student else None
            self._scorer = make_scorer(self.task, student, self.lora, engine=engine)
        return self._scorer

    def run(self, student: ModelSettings, items: list[WorkItem]) -> Iterator[tuple[WorkItem, dict | None,
                                                                                     Failure | None]]:
        """(item, record, None) per finished item, (item, None, failure) per item that failed every try."""
        scorer = self.scorer(student)
        for item in items:
            for attempt in range(1, self.settings.max_tries + 1):
                try:
                    rec = scorer.score(item)
                except UserError:
                    raise
                except Exception as err:  # noqa: BLE001 - recorded with its traceback, never scored
                    if attempt == self.settings.max_tries:
                        yield item, None, Failure(item.key, attempt, one_line(err), traceback.format_exc(), ["local"])
                    continue
                yield item, rec, None
                break

    def release(self) -> None:
        """Between phases: the local student stays (the next phase usually needs the same weights)."""

    def close(self) -> None:
        self._scorer = None
        self._engine = None


def make_executor(settings: ExecutorSettings, task, lora: LoraSettings, *, engine=None):
    """`engine`: the driver's resident student, which the local executor scores on (Ray workers load their own)."""
    if settings.kind == "ray":
        from pipeline.ray_executor import RayExecutor

        return RayExecutor(task, lora, settings)
    return LocalExecutor(task, lora, settings, engine=engine)
