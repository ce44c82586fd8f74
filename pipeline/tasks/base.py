"""What ReST-EM and adapt-student need from a task domain (knowledge documents, ARC puzzles, ...).

A *context* is one input the teacher writes a self-edit for. The loop only ever calls these methods, so a new domain
is one class. Scores are floats where higher is better (mean QA score, pass@2 as 0/1, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Prepared:
    """A parsed self-edit: what the student trains on, or why it cannot (then it is never trained on)."""

    valid: bool
    payload: Any = None  # task-specific: training texts, a recipe with its generated data, ...
    reason: str | None = None  # why it is invalid
    info: dict = field(default_factory=dict)  # JSON-able details for the records (counts, the parsed recipe, ...)


class Scored(float):
    """A score that carries the replies it was graded from ({question, gold, pred, score} per question), so that a
    run's records can be graded again without training again. It is a float everywhere else."""

    replies: list[dict]

    def __new__(cls, score: float, replies: list[dict]):
        obj = super().__new__(cls, score)
        obj.replies = replies
        return obj


def replies_of(score) -> list[dict] | None:
    """The replies a task's score was graded from (None: the task does not keep them)."""
    return getattr(score, "replies", None)


class SelfEditTask(Protocol):
    name: str

    def context_id(self, context) -> str: ...

    def prompt(self, context) -> str:
        """The teacher's prompt for this context."""

    def prepare(self, context, completion: str) -> Prepared:
        """Turn a teacher completion into something the student can absorb."""

    def baseline(self, engine, context) -> float:
        """The student's score on the context before any adaptation (engine LoRA freshly reset); a `Scored` where
        the task keeps the replies."""

    def score(self, engine, context, prepared: Prepared, seed: int) -> float:
        """Reset the engine's LoRA, absorb `prepared` under `seed`, return the score after."""
