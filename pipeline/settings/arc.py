"""ARC's settings (task: arc), shared by adapt-student and train-teacher."""

from __future__ import annotations

from dataclasses import dataclass, field

@dataclass
class ArcSettings:
    """Few-shot ARC (task: arc): inputs, the limits a recipe must respect, test-time data, prediction."""

    challenges: str | None = None
    solutions: str | None = None
    # train-teacher: held-out tasks (the paper: its filtered evaluation file); unset, data.heldout_contexts tasks are
    # held out of the shuffled training tasks.
    heldout_challenges: str | None = None
    heldout_solutions: str | None = None
    # Between the cells of a grid row: "" writes one digit per cell; " " realigns tokens with cells for tokenizers
    # that merge digit runs (Llama 3), at about twice the length.
    sep: str = ""
    # A recipe outside these bounds is invalid (reward 0), never clipped into range.
    max_learning_rate: float = 1e-2
    max_epochs: int = 10
    # Leave-one-out tasks (with the recipe's augmentations) per ARC task: the untransformed ones are kept first,
    # the rest sampled with a seed. Examples longer than student.train.max_length tokens are left out and counted.
    max_examples: int = 250
    # A recipe that costs more optimizer steps (epochs x batches) is invalid, not shortened.
    max_training_steps: int = 375
    # A teacher sample whose JSON does not parse is re-drawn at most this many times, then recorded as invalid.
    resamples: int = 2
    # A JSON recipe used where no teacher sample is valid, and reported as such; null: such a task is not adapted
    # (its predictions come from the unadapted student).
    fallback_recipe: str | None = None
    # Predict under the first N of (identity, the 7 other symmetries of the square), invert, vote into 2 attempts.
    voting_transforms: int = 8
    # Generation budget beyond the character length of the largest output grid the task suggests.
    max_new_tokens_margin: int = 16
    # adapt-student: also save each task's adapter under adapters/<task id>/.
    save_adapters: bool = False
