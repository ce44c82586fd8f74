"""`seal-tt update`'s settings: a store's student, strategy, probes, gate and drift."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from core.config import (EditsSettings, PassageSettings, SelfEditSettings, StudentSettings, TeacherSettings)


@dataclass
class ReplaySettings:
    ratio: float = 1.0  # earlier self-edit sequences replayed per new sequence (strategy=replay)
    max_sequences: int | None = None  # a cap on the replayed sequences per update (None: ratio alone)


@dataclass
class GateSettings:
    """A retention gate: an update that drops the earlier documents' probes by more than `max_drop` is not kept
    as it is."""

    max_drop: float | None = None  # None: no gate; else the most the earlier probes' mean score may fall
    action: Literal["reject", "scale"] = "reject"  # scale: halve the update until it passes (down to min_scale)
    min_scale: float = 0.125


@dataclass
class ProbeSettings:
    """Questions scored before and after every update, to measure what the store keeps and what it loses."""

    max_documents: int | None = None  # earlier documents whose probes are scored per update (None: all)
    teacher_questions: bool = True  # documents without questions get questions the teacher writes (flagged)
    per_document: int = 5  # teacher-written questions per document
    max_new_tokens: int = 256  # for the teacher writing them


@dataclass
class DriftSettings:
    """General-ability drift: KL(base || student) in bits per token on fixed text, after every update."""

    text: str | None = None  # a text file; None: the packaged sample documents
    max_tokens: int = 512


@dataclass
class StoreConfig:
    """`seal-tt update`: keep one student's knowledge up to date from a folder of documents, one update at a time.

    The student, its LoRA, its training settings, the strategy and the seed are fixed when the store is created;
    the documents, the teacher, the probes' budget and the gate may change from one update to the next.
    """

    store: str = "store"
    docs: list[str] = field(default_factory=list)
    questions: str | None = None
    strategy: Literal["merge", "replay", "library", "joint"] = "merge"
    seed: int = 0
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    student: StudentSettings = field(default_factory=StudentSettings)
    self_edit: SelfEditSettings = field(default_factory=SelfEditSettings)
    edits: EditsSettings = field(default_factory=lambda: EditsSettings(count=None))
    passages: PassageSettings = field(default_factory=PassageSettings)
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    gate: GateSettings = field(default_factory=GateSettings)
    probes: ProbeSettings = field(default_factory=ProbeSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)


# What a store keeps from its creation: a later update with other values would mix students in one store.
STORE_FIXED = ("student.model", "student.lora", "student.train", "student.eval", "strategy", "seed",
               "self_edit")

# Bounds checked by `core.config.check_ranges` (which reads the `_RANGES` table of a class's module).
_RANGES = {
    ReplaySettings: {"ratio": (lambda v: v >= 0, ">= 0"),
                     "max_sequences": (lambda v: v is None or v >= 0, ">= 0 or null")},
    GateSettings: {"max_drop": (lambda v: v is None or 0 <= v <= 1, "in [0, 1] or null"),
                   "min_scale": (lambda v: 0 < v <= 1, "in (0, 1]")},
    ProbeSettings: {"max_documents": (lambda v: v is None or v >= 0, ">= 0 or null"),
                    "per_document": (lambda v: v >= 1, ">= 1"), "max_new_tokens": (lambda v: v >= 1, ">= 1")},
    DriftSettings: {"max_tokens": (lambda v: v >= 8, ">= 8")},
}
