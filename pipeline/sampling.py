"""The teacher as a sampler inside a workflow: loaded for one phase and freed after it, or shared with the student.

Both adapt-student paths (knowledge and ARC) sample through `teacher_backend`, so that the teacher never holds the
device while the student trains.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager, nullcontext

from core.config import AdaptConfig


@contextmanager
def teacher_backend(config: AdaptConfig, engine=None):
    """(backend, adapter_off) for sampling the teacher.

    When teacher and student are one model (`engine` given), the backend samples from the resident base, and
    `adapter_off()` switches the student's LoRA off around each draw. Otherwise the teacher is loaded here, and
    closed with its memory freed on exit, so that the student has the device to itself afterwards.
    """
    # Looked up at call time, so a test (or a user) can swap the backend class or factory on teacher.backends.
    from teacher.backends import TransformersBackend, make_backend

    if engine is not None:
        yield (TransformersBackend(config.teacher.model, peft_model=engine.model, tokenizer=engine.tokenizer),
               engine.model.disable_adapter)
        return
    backend = make_backend(config.teacher.backend, config.teacher.model)
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
