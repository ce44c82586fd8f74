"""The teacher as a sampler inside a workflow: loaded for one phase and freed after it, or shared with the student.

Both adapt-student paths (knowledge and ARC) sample through `teacher_backend`, so that the teacher never holds the
device while the student trains.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager, nullcontext

from core.config import StudentSettings, TeacherSettings


def shares_model(teacher: TeacherSettings, student: StudentSettings) -> bool:
    """Whether the teacher samples from the student's own loaded model (one model, the transformers backend)."""
    return teacher.model == student.model and teacher.backend == "transformers"


class Resident:
    """The student a workflow's process holds, loaded once (`load`): when teacher and student are one model the
    teacher samples from it; released (`release`) before launched processes or workers load their own."""

    def __init__(self, student: StudentSettings):
        self.settings = student
        self.engine = None

    def load(self):
        if self.engine is None:
            from student.engine import StudentEngine

            self.engine = StudentEngine(self.settings.model, self.settings.lora)
        return self.engine

    def release(self) -> None:
        if self.engine is not None:
            self.engine = None
            free_memory()


@contextmanager
def teacher_backend(teacher: TeacherSettings, engine=None):
    """(backend, adapter_off) for sampling the teacher (`teacher`: its model, backend and generation settings).

    When teacher and student are one model (`engine` given), the backend samples from the resident base, and
    `adapter_off()` switches the student's LoRA off around each draw. Otherwise the teacher is loaded here, and
    closed with its memory freed on exit, so that the student has the device to itself afterwards.
    """
    # Looked up at call time, so a test (or a user) can swap the backend class or factory on teacher.backends.
    from teacher.backends import TransformersBackend, make_backend

    if engine is not None:
        yield (TransformersBackend(teacher.model, peft_model=engine.model, tokenizer=engine.tokenizer),
               engine.model.disable_adapter)
        return
    backend = make_backend(teacher.backend, teacher.model)
    try:
        yield backend, nullcontext
    finally:
        backend.close()
        del backend
        free_memory()


def free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
