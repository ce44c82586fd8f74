"""`seal-tt adapt-student`'s settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from core.config import (EditsSettings, ExecutorSettings, PassageSettings, SelfEditSettings, StudentSettings,
                         TeacherSettings)
from pipeline.settings.arc import ArcSettings


@dataclass
class AdaptConfig:
    """`seal-tt adapt-student`: the teacher writes self-edits for documents, the student absorbs them."""

    task: Literal["knowledge", "arc"] = "knowledge"
    docs: list[str] = field(default_factory=list)
    questions: str | None = None
    limit: int | None = None
    output: str = "runs/adapt"
    # joint: every document into one adapter (continued pretraining); per_document: one adapter each
    mode: Literal["joint", "per_document"] = "joint"
    # also write merged/ (base + adapter folded into plain weights, safetensors); joint mode only
    merge: bool = False
    seed: int = 0
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    student: StudentSettings = field(default_factory=StudentSettings)
    self_edit: SelfEditSettings = field(default_factory=SelfEditSettings)
    edits: EditsSettings = field(default_factory=EditsSettings)
    passages: PassageSettings = field(default_factory=PassageSettings)
    # Print the plan (passages, sequences, steps, a time estimate) and stop before any model loads.
    dry_run: bool = False
    arc: ArcSettings = field(default_factory=ArcSettings)
    # Where mode=per_document's documents are absorbed (one work item each): this process, or Ray workers.
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
