"""Each command's config class, as `seal-tt config COMMAND` resolves it."""

from __future__ import annotations

from pipeline.settings import AdaptConfig, TrainTeacherConfig
from pipeline.store.config import StoreConfig

CONFIGS: dict[str, type] = {"adapt-student": AdaptConfig, "train-teacher": TrainTeacherConfig,
                           "update": StoreConfig}
