"""Few-shot ARC as a self-edit task: the teacher writes a JSON recipe, the student trains on it at test time.

One context is one `ArcTask`. A completion becomes training data in `prepare`: the recipe is parsed strictly, the
leave-one-out tasks of the demonstrations are augmented as it asks (seeded per task, capped), rendered through the
student's chat template, and counted against the step budget. Anything wrong with the recipe makes the self-edit
invalid with a reason; an invalid self-edit is never trained on and scores 0.

`score` is the paper's inner loop on the resident student: reset the LoRA, train on the recipe's data with its
learning rate and epochs (batch size, schedule, LoRA shape from the config), then predict every test output under
several invertible transforms, map the predictions back, vote them into two attempts, and grade pass@2.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from core.config import GenerationSettings, TrainSettings
from core.errors import UserError
from core.seeds import context_seed
from pipeline.settings import ArcSettings
from pipeline.tasks.base import Prepared
from student.data import TrainExample

from .augment import AugmentConfig, build_training_tasks, voting_transforms
from .data import MAX_SIDE, ArcTask, Grid, grid_shape, grid_to_list, load_tasks
from .recipe import Recipe, RecipeBounds, RecipeError, parse_recipe, recipe_prompt, training_steps
from .render import encode_chat, predict_messages, prompt_text, text_to_grid, train_messages
from .voting import invert_predictions, pass_at_2, vote


@dataclass
class ArcSelfEdit:
    """What a valid recipe trains on: the kept leave-one-out tasks, encoded on demand.

    Token ids are rebuilt at training time rather than stored: a ReST-EM round holds hundreds of prepared
    self-edits, and their encoded examples would take gigabytes; the grids take kilobytes.
    """

    recipe: Recipe
    tasks: list[ArcTask]
    train: TrainSettings

    def examples(self, tokenizer, sep: str = "") -> list[TrainExample]:
        return [TrainExample(*_encode(tokenizer, t, self.recipe.loss, sep)) for t in self.tasks]


@dataclass
class Prediction:
    """The two attempts per test input, and what produced them."""

    attempts: list[list[Grid]]  # per test input, at most 2 grids, most votes first
    candidates: list[int]  # per test input: predictions that parsed and inverted cleanly (the votes cast)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"attempts": [[grid_to_list(g) for g in a] for a in self.attempts], "candidates": self.candidates,
                "seconds": round(self.seconds, 3)}


@dataclass
class RecipeSample:
    """One teacher self-edit after at most `resamples` redraws of unparseable drafts."""

    text: str
    num_tokens: int
    finished: bool
    attempts: int  # drafts drawn for this slot, this one included
    rejected: list[dict] = field(default_factory=list)  # earlier drafts: {"text", "reason"}


def _encode(tokenizer, task: ArcTask, loss: str, sep: str) -> tuple[list[int], list[int]]:
    # The turn end is trained with the output-only loss too, or the student never learns where its grid stops
    # (loss="all" trains on it anyway).
    return encode_chat(tokenizer, train_messages(task, 0, sep=sep), loss=loss, include_turn_end=True)


class ArcFewShotTask:
    """The `SelfEditTask` of few-shot ARC. Contexts are `ArcTask`s with their test outputs (for scoring).

    `tokenizer` must be the student's: the step budget and the length limit are counted in its tokens.
    """

    name = "arc"
    # The paper rewards a recipe by pass@2 after training (1 or 0), not by the change from the unadapted student:
    # a recipe that keeps a task solved is as good a demonstration as one that solves it first.
    reward_is_gain = False

    def __init__(self, tokenizer, settings: ArcSettings, train: TrainSettings, *, seed: int = 0,
                 eval_batch_size: int = 16):
        _check_settings(settings, train)
        self.tokenizer = tokenizer
        self.settings = settings
        self.train_settings = train
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.bounds = RecipeBounds(max_learning_rate=settings.max_learning_rate, max_epochs=settings.max_epochs)
        self.fallback = None
        if settings.fallback_recipe is not None:
            try:
                self.fallback = parse_recipe(settings.fallback_recipe, self.bounds)
            except RecipeError as err:
                raise UserError(f"arc.fallback_recipe is not a valid recipe: {err.reason}") from None

    @classmethod
    def from_config(cls, config, tokenizer) -> ArcFewShotTask:
        """From any command config with `arc`, `student` and `seed` (AdaptConfig, TrainTeacherConfig)."""
        return cls(tokenizer, config.arc, config.student.train, seed=config.seed,
                   eval_batch_size=config.student.eval.batch_size)

    # ------------------------------------------------------------------------------------------ protocol
    def context_id(self, context: ArcTask) -> str:
        return context.id

    def prompt(self, context: ArcTask) -> str:
        return recipe_prompt(context, self.bounds, self.settings.sep)

    def prepare(self, context: ArcTask, completion: str) -> Prepared:
        try:
            recipe = parse_recipe(completion, self.bounds)
        except RecipeError as err:
            return Prepared(False, reason=f"invalid recipe: {err.reason}", info={"stage": "parse"})
        return self.prepare_recipe(context, recipe)

    def prepare_recipe(self, context: ArcTask, recipe: Recipe) -> Prepared:
        """Build, measure and budget-check the training data of an already parsed recipe."""
        s = self.settings
        info: dict[str, Any] = {"recipe": dataclasses.asdict(recipe)}
        # Seeded by the task alone, so every sample and every scoring seed of one recipe sees the same data.
        seed = context_seed(self.seed, "arc-data", context.id)
        tasks = build_training_tasks(context, recipe.groups, seed, AugmentConfig(max_tasks=s.max_examples))
        info["augmented_tasks"] = len(tasks)
        if not tasks:
            return Prepared(False, reason="no training data: the task has fewer than 2 demonstrations",
                            info={**info, "stage": "data"})
        limit = self.train_settings.max_length
        lengths = [len(_encode(self.tokenizer, t, recipe.loss, s.sep)[0]) for t in tasks]
        kept = [t for t, n in zip(tasks, lengths) if n <= limit]
        info.update(examples=len(kept), too_long=len(tasks) - len(kept),
                    tokens=sum(n for n in lengths if n <= limit))
        if not kept:
            return Prepared(False, reason=f"no training example fits in student.train.max_length={limit} tokens "
                            f"(shortest: {min(lengths)})", info={**info, "stage": "data"})
        steps = training_steps(recipe, len(kept), self.train_settings.batch_size)
        info["steps"] = steps
        if steps > s.max_training_steps:
            return Prepared(False, reason=f"over budget: {steps} training steps > arc.max_training_steps="
                            f"{s.max_training_steps}", info={**info, "stage": "budget"})
        train = replace(self.train_settings, learning_rate=recipe.learning_rate, epochs=recipe.epochs)
        return Prepared(True, payload=ArcSelfEdit(recipe, kept, train), info=info)

    def baseline(self, engine, context: ArcTask) -> float:
        engine.reset()
        return 1.0 if self.solved(context, self.predict(engine, context)) else 0.0

    def score(self, engine, context: ArcTask, prepared: Prepared, seed: int) -> float:
        if not prepared.valid:
            return 0.0  # an invalid self-edit is never trained on: reward 0 without touching the engine
        _, prediction = self.adapt_and_predict(engine, context, prepared, seed)
        return 1.0 if self.solved(context, prediction) else 0.0

    # ------------------------------------------------------------------------------------------ inner loop
    def adapt_and_predict(self, engine, context: ArcTask, prepared: Prepared, seed: int):
        """Reset the LoRA under `seed`, train on `prepared`, predict. Returns (TrainStats, Prediction)."""
        if not prepared.valid:
            raise ValueError(f"refusing to train on an invalid self-edit ({prepared.reason})")
        edit: ArcSelfEdit = prepared.payload
        engine.reset(seed=seed)
        stats = engine.train(edit.examples(engine.tokenizer, self.settings.sep), edit.train, seed=seed)
        return stats, self.predict(engine, context)

    def predict(self, engine, context: ArcTask) -> Prediction:
        """Greedy predictions under the voting transforms, mapped back and voted into 2 attempts per test input."""
        start = time.perf_counter()
        tok = engine.tokenizer
        sep = self.settings.sep
        # The solutions must not reach the prompt, whatever a transform does with them.
        query = replace(context, test_outputs=None)
        owners, prompts, budget = [], [], 0
        for t in voting_transforms()[: self.settings.voting_transforms]:
            view = t.apply_task(query)
            for i in range(len(view.test_inputs)):
                text = prompt_text(tok, predict_messages(view, i, sep=sep))
                prompts.append(tok(text, add_special_tokens=False)["input_ids"])
                owners.append((t, i))
                budget = max(budget, output_chars(view, i, sep))
        texts = engine.generate(prompts, max_new_tokens=budget + self.settings.max_new_tokens_margin,
                                batch_size=self.eval_batch_size, stop_at_newline=False)
        pairs: list[list] = [[] for _ in context.test_inputs]
        for (t, i), text in zip(owners, texts):
            pairs[i].append((t, text_to_grid(text)))
        inverted = [invert_predictions(p) for p in pairs]
        return Prediction([vote(c, 2) for c in inverted], [len(c) for c in inverted], time.perf_counter() - start)

    @staticmethod
    def solved(context: ArcTask, prediction: Prediction) -> bool:
        if context.test_outputs is None:
            raise ValueError(f"task {context.id} has no test outputs to score against")
        return pass_at_2(prediction.attempts, context.test_outputs)

    # ------------------------------------------------------------------------------------------ teacher side
    def sample_self_edits(self, backend, contexts: list[ArcTask], generation: GenerationSettings,
                          seeds: list[int]) -> list[list[RecipeSample]]:
        """`generation.num_samples` recipes per context; each draft whose JSON does not parse is redrawn, at most
        `arc.resamples` times, then kept as it is (and will be recorded invalid).

        Only parse failures are redrawn: a well-formed recipe that breaks the budget is the teacher's choice, and
        ReST-EM should see it fail. Redraws use seeds derived from the context's, so a rerun draws the same ones.
        """
        first = backend.sample([self.prompt(c) for c in contexts], generation, seeds)
        out = []
        for context, seed, samples in zip(contexts, seeds, first):
            slots = [RecipeSample(s.text, s.num_tokens, s.finished, 1) for s in samples]
            for attempt in range(1, self.settings.resamples + 1):
                bad = [i for i, s in enumerate(slots) if self._parse_error(s.text) is not None]
                if not bad:
                    break
                redo = replace(generation, num_samples=len(bad))
                (fresh,) = backend.sample([self.prompt(context)], redo, [context_seed(seed, "resample", attempt)])
                for i, new in zip(bad, fresh):
                    old = slots[i]
                    slots[i] = RecipeSample(new.text, new.num_tokens, new.finished, old.attempts + 1,
                                            old.rejected + [{"text": old.text, "reason": self._parse_error(old.text)}])
            out.append(slots)
        return out

    def _parse_error(self, text: str) -> str | None:
        try:
            parse_recipe(text, self.bounds)
        except RecipeError as err:
            return err.reason
        return None

    def check_tokenizer(self, context: ArcTask) -> None:
        """Fail early, as a user error, when the student's chat template hides the answer from the loss mask."""
        tasks = build_training_tasks(context, (), 0, AugmentConfig(max_tasks=1, shuffle_examples=False))
        if not tasks:
            return
        try:
            _encode(self.tokenizer, tasks[0], "output", self.settings.sep)
        except ValueError as err:
            raise UserError(f"student tokenizer: {err}") from None


def output_chars(task: ArcTask, test_index: int, sep: str = "") -> int:
    """Characters of the largest output grid the demonstrations suggest for test input `test_index`.

    A byte-level tokenizer never needs more tokens than characters for digits, so this bounds the generation
    budget. The shape is the largest over the demonstrations' outputs and the test input scaled by the
    input-to-output ratio when every demonstration shares one (tiling, upscaling, cropping by a fixed factor);
    when neither outputs nor ratios agree, the test input's own shape joins the maximum.
    """
    h, w = (max(v) for v in zip(*(grid_shape(ex.output) for ex in task.train)))
    ratios = {(Fraction(len(ex.output), len(ex.input)), Fraction(len(ex.output[0]), len(ex.input[0])))
              for ex in task.train}
    ti_h, ti_w = grid_shape(task.test_inputs[test_index])
    if len(ratios) == 1:
        (rh, rw), = ratios
        h, w = max(h, -(-ti_h * rh.numerator // rh.denominator)), max(w, -(-ti_w * rw.numerator // rw.denominator))
    elif len({grid_shape(ex.output) for ex in task.train}) > 1:
        h, w = max(h, ti_h), max(w, ti_w)
    h, w = min(h, MAX_SIDE), min(w, MAX_SIDE)
    return h * (w + (w - 1) * len(sep)) + h


def load_contexts(settings: ArcSettings, limit: int | None = None, *, require_solutions: bool = False
                  ) -> list[ArcTask]:
    """The ARC tasks of `settings.challenges` (with `settings.solutions` when given), in file order.

    `require_solutions` for training the teacher: its rewards are pass@2 against the solutions.
    """
    if not settings.challenges:
        raise UserError("no ARC tasks given (--arc-tasks FILE, or arc.challenges in the config)")
    if require_solutions and not settings.solutions:
        raise UserError("ARC rewards need the solutions of the tasks: set arc.solutions (--arc-solutions FILE)")
    tasks = list(load_tasks(settings.challenges, settings.solutions).values())
    if limit is not None:
        if limit < 1:
            raise UserError("limit must be at least 1")
        tasks = tasks[:limit]
    return tasks


def _check_settings(s: ArcSettings, train: TrainSettings) -> None:
    problems = []
    if not 1 <= s.voting_transforms <= len(voting_transforms()):
        problems.append(f"arc.voting_transforms must be 1 to {len(voting_transforms())}")
    for name in ("max_examples", "max_training_steps", "max_epochs"):
        if getattr(s, name) < 1:
            problems.append(f"arc.{name} must be at least 1")
    if s.resamples < 0 or s.max_new_tokens_margin < 0:
        problems.append("arc.resamples and arc.max_new_tokens_margin must be >= 0")
    if not s.max_learning_rate > 0:
        problems.append("arc.max_learning_rate must be > 0")
    if any(c.isdigit() or c == "\n" for c in s.sep):
        problems.append("arc.sep must not contain digits or newlines")
    if train.batch_size < 1:
        problems.append("student.train.batch_size must be at least 1")
    if problems:
        raise UserError(problems[0])
