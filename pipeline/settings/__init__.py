"""The command configs of adapt-student and train-teacher (and ARC's settings block they share); the store's is
`pipeline.store.config`, the registry of all three `pipeline.commands`. The settings blocks both roles share, and the
typed loader, are `core.config`."""

from pipeline.settings.adapt import AdaptConfig
from pipeline.settings.arc import ArcSettings
from pipeline.settings.train_teacher import DataSettings, RestEMSettings, TrainTeacherConfig, WarmStartSettings

__all__ = ["AdaptConfig", "ArcSettings", "DataSettings", "RestEMSettings", "TrainTeacherConfig", "WarmStartSettings"]
