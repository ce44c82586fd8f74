"""`seal-tt train-teacher`'s settings: the ReST-EM data, its outer loop, the warm start."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from core.config import (ExecutorSettings, MStepSettings, SelfEditSettings, StudentSettings, TeacherSettings)
from pipeline.settings.arc import ArcSettings


@dataclass
class DataSettings:
    """Contexts for ReST-EM: a pool of documents with questions, split into held-out and per-round training sets."""

    docs: list[str] = field(default_factory=list)
    questions: str | None = None
    # Held-out contexts come from these files when given, else from the front of the shuffled pool.
    heldout_docs: list[str] = field(default_factory=list)
    contexts_per_round: int = 50
    heldout_contexts: int = 200
    # true: each round takes new training contexts (the paper); false: every round reuses the same ones
    fresh_per_round: bool = True
    shuffle_seed: int = 0


@dataclass
class RestEMSettings:
    """The outer loop's choices, all visible (the paper's where it states them)."""

    seeds_per_edit: int = 3
    selection: Literal["best_of_k", "all_positive", "top_k"] = "best_of_k"
    top_k: int = 1  # cap per context for selection=top_k
    must_beat_baseline: bool = True  # drop selected self-edits whose mean reward is <= 0
    m_step_init: Literal["previous", "base"] = "previous"
    merge_teacher: bool = False  # also save each round's teacher with the LoRA merged into the weights
    # The paper's setting: the model that writes self-edits is also the one that learns them; after each M-step the
    # student becomes the new teacher's merged weights (implies merge_teacher).
    student_follows_teacher: bool = False
    heldout_samples: int = 1
    heldout_temperature: float | None = None  # None: teacher.generation.temperature
    # When fewer contexts than this have a selected self-edit after the E-step, the round draws
    # teacher.generation.num_samples more per context once (round_R/samples_more.jsonl, e_step_more.jsonl) and
    # selects over all of them before its M-step; null: never.
    min_contexts_with_winner: int | None = None


@dataclass
class WarmStartSettings:
    """SFT the teacher on another writer's (passage, completion) pairs before round 1 (teacher/warm_start.py), with
    the M-step's settings (`m_step`). Each prompt is re-rendered from its passage with self_edit.prompt."""

    # JSONL of {prompt, completion} (the paper's EM_SFT files; the passage is parsed out of the raw prompt) or JSON
    # lists of {title, context, completions}; empty: no warm start.
    files: list[str] = field(default_factory=list)
    completions_per_passage: int | None = 1  # from {completions} records: the first N; null: all
    # Document files (anything --docs reads) whose passages must never be trained on, besides the held-out ones.
    exclude: list[str] = field(default_factory=list)
    limit: int | None = None  # the first N pairs only


@dataclass
class TrainTeacherConfig:
    """`seal-tt train-teacher`: ReST-EM rounds of E-step (sample, absorb, score) and M-step (SFT the teacher)."""

    task: Literal["knowledge", "arc"] = "knowledge"
    output: str = "runs/train-teacher"
    rounds: int = 2
    seed: int = 0
    data: DataSettings = field(default_factory=DataSettings)
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    student: StudentSettings = field(default_factory=StudentSettings)
    self_edit: SelfEditSettings = field(default_factory=SelfEditSettings)
    rest_em: RestEMSettings = field(default_factory=RestEMSettings)
    m_step: MStepSettings = field(default_factory=MStepSettings)
    arc: ArcSettings = field(default_factory=ArcSettings)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    # Live metrics: any of tensorboard, trackio, wandb (pipeline/tracking.py); empty: none.
    report_to: list[str] = field(default_factory=list)
    # Distillation before round 1: SFT the teacher on these pairs first (train-teacher --warm-start FILE).
    warm_start: WarmStartSettings = field(default_factory=WarmStartSettings)


# Bounds checked by `core.config.check_ranges` (which reads the `_RANGES` table of a class's module).
_RANGES = {
    TrainTeacherConfig: {"rounds": (lambda v: v >= 0, ">= 0")},
    RestEMSettings: {"seeds_per_edit": (lambda v: v >= 1, ">= 1"), "top_k": (lambda v: v >= 1, ">= 1"),
                     "heldout_samples": (lambda v: v >= 1, ">= 1"),
                     # A thin selection is met by sampling more before the M-step, never by a changed reward or
                     # selection rule: the teacher still learns only from self-edits that helped the student.
                     "min_contexts_with_winner": (lambda v: v is None or v >= 1, ">= 1 or null")},
    WarmStartSettings: {"completions_per_passage": (lambda v: v is None or v >= 1, ">= 1 or null"),
                        "limit": (lambda v: v is None or v >= 1, ">= 1 or null")},
}
