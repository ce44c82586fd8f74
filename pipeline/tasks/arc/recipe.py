"""The ARC self-edit: a JSON recipe the teacher writes, its parser, and the teacher's prompt.

A bad recipe is the teacher's fault, not the user's: ``parse_recipe`` raises ``RecipeError`` (never
``UserError``) so the caller can resample a bounded number of times and then record the self-edit as
invalid. Nothing here guesses a default for a missing or broken field; a recipe either parses whole
or not at all.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from .data import ArcTask
from .render import demonstrations_text


class RecipeError(ValueError):
    """The teacher's output is not a usable recipe; ``reason`` says why in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Recipe:
    use_basic: bool
    use_size: bool
    use_chain: bool
    use_repeat: bool
    loss: str  # "all" | "output"
    learning_rate: float
    epochs: int

    @property
    def groups(self) -> tuple[str, ...]:
        """The augmentation groups switched on, in ``augment.GROUP_NAMES`` order."""
        flags = {"basic": self.use_basic, "size": self.use_size, "chain": self.use_chain, "repeat": self.use_repeat}
        return tuple(g for g, on in flags.items() if on)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class RecipeBounds:
    """Accepted ranges: learning rate in (0, max_learning_rate], epochs in [min_epochs, max_epochs]."""

    max_learning_rate: float = 1e-2
    min_epochs: int = 1
    max_epochs: int = 10

    def __post_init__(self) -> None:
        if not self.max_learning_rate > 0 or not 1 <= self.min_epochs <= self.max_epochs:
            raise ValueError(f"inconsistent recipe bounds: {self}")


DEFAULT_BOUNDS = RecipeBounds()
LOSS_CHOICES = ("all", "output")
FIELDS = ("use_basic", "use_size", "use_chain", "use_repeat", "loss", "learning_rate", "epochs")

# Longer spellings teachers tend to produce for the same fields; mapped, never guessed beyond this.
ALIASES = {
    "use_basic_augmentations": "use_basic",
    "use_size_augmentations": "use_size",
    "use_chain_augmentations": "use_chain",
    "use_repeat_augmentations": "use_repeat",
    "lr": "learning_rate",
    "num_train_epochs": "epochs",
}

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)


def extract_json_object(text: str) -> dict:
    """The first JSON object in ``text``: inside a ```json fence when there is one, else anywhere."""
    if not isinstance(text, str):
        raise RecipeError(f"expected text, got {type(text).__name__}")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for chunk in candidates:
        obj = _first_object(chunk)
        if obj is not None:
            return obj
    if "{" not in text:
        raise RecipeError("no JSON object in the output")
    raise RecipeError("malformed JSON: no complete object could be decoded")


def _first_object(chunk: str) -> dict | None:
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", chunk):
        try:
            obj, _ = decoder.raw_decode(chunk, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _flatten(obj: dict) -> dict:
    # Accept a teacher that groups fields ({"augmentations": {...}, "training": {...}}): one level of
    # nesting is merged; a key given twice is ambiguous and rejected.
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for k, v in items:
            k = ALIASES.get(k, k)
            if k in flat:
                raise RecipeError(f"field {k!r} given more than once")
            flat[k] = v
    return flat


def _bool(d: dict, key: str) -> bool:
    v = d[key]
    if not isinstance(v, bool):
        raise RecipeError(f"{key} must be true or false, got {json.dumps(v)}")
    return v


def parse_recipe(text: str, bounds: RecipeBounds = DEFAULT_BOUNDS) -> Recipe:
    """Extract, type-check and range-check a recipe from teacher output; RecipeError otherwise."""
    d = _flatten(extract_json_object(text))
    unknown = sorted(set(d) - set(FIELDS))
    if unknown:
        raise RecipeError(f"unknown field(s): {', '.join(unknown)}")
    missing = [k for k in FIELDS if k not in d]
    if missing:
        raise RecipeError(f"missing field(s): {', '.join(missing)}")

    loss = d["loss"]
    if loss not in LOSS_CHOICES:
        raise RecipeError(f"loss must be one of {list(LOSS_CHOICES)}, got {json.dumps(loss)}")

    lr = d["learning_rate"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr):
        raise RecipeError(f"learning_rate must be a number, got {json.dumps(lr)}")
    if not 0 < lr <= bounds.max_learning_rate:
        raise RecipeError(f"learning_rate {lr:g} outside (0, {bounds.max_learning_rate:g}]")

    epochs = d["epochs"]
    if isinstance(epochs, float) and epochs.is_integer():
        epochs = int(epochs)  # 3.0 is an integer written by a model that likes decimals
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        raise RecipeError(f"epochs must be an integer, got {json.dumps(d['epochs'])}")
    if not bounds.min_epochs <= epochs <= bounds.max_epochs:
        raise RecipeError(f"epochs {epochs} outside [{bounds.min_epochs}, {bounds.max_epochs}]")

    return Recipe(
        use_basic=_bool(d, "use_basic"),
        use_size=_bool(d, "use_size"),
        use_chain=_bool(d, "use_chain"),
        use_repeat=_bool(d, "use_repeat"),
        loss=loss,
        learning_rate=float(lr),
        epochs=epochs,
    )


def training_steps(
    recipe: Recipe, n_examples: int, batch_size: int, gradient_accumulation_steps: int = 1
) -> int:
    """Optimizer steps the recipe costs, so callers can reject over-budget recipes before training."""
    if n_examples < 0 or batch_size < 1 or gradient_accumulation_steps < 1:
        raise ValueError("need n_examples >= 0, batch_size >= 1, gradient_accumulation_steps >= 1")
    batches = math.ceil(n_examples / batch_size)
    return recipe.epochs * math.ceil(batches / gradient_accumulation_steps)


def recipe_prompt(task: ArcTask, bounds: RecipeBounds = DEFAULT_BOUNDS, sep: str = "") -> str:
    """The teacher's prompt: the demonstrations, then a request for a JSON recipe with every key explained."""
    example = Recipe(True, False, False, False, "output", 1e-4, 3).to_json()
    return f"""Below are the example pairs of a visual pattern puzzle. Each grid is written as lines of digits 0-9, one line per row; each digit is a colour. One hidden rule turns every input into its output.

{demonstrations_text(task, sep)}

A small language model will be fine-tuned on these examples before it is asked to solve a new input of this puzzle. Its training data is made by holding out each example in turn and asking the model to predict it from the others; you choose how that data is augmented and how the model is trained. Reply with a single JSON object with exactly these keys:

- "use_basic": true or false. Add rotated (90, 180, 270 degrees), mirrored and transposed copies of every example. Helps when the rule does not depend on direction.
- "use_size": true or false. Add copies with every cell doubled in height, in width, or both. Helps when the rule does not depend on the grid's scale.
- "use_chain": true or false. Add copies that are rotated or mirrored and then doubled in size.
- "use_repeat": true or false. Add copies with every grid tiled twice vertically, horizontally, or both.
- "loss": "all" to train on the whole prompt, or "output" to train only on the answer grids.
- "learning_rate": a number greater than 0 and at most {bounds.max_learning_rate:g}.
- "epochs": an integer from {bounds.min_epochs} to {bounds.max_epochs}.

Augmented grids larger than 30 cells per side are left out. Example of the format:
{example}

Answer with the JSON object only."""
