"""Grid transforms and the augmented training tasks a recipe asks for.

A transform is applied to every grid of a task (inputs and outputs alike), so the task's rule is
conjugated, not broken: "rotate the input" stays "rotate the input" in a flipped world. A transform's
``inverse`` is defined exactly on the image of ``apply`` and raises ``NotInvertibleError`` elsewhere;
voting relies on that to throw away predictions that are inconsistent with the transform they were
made under (e.g. an "upscaled" answer whose 2x2 blocks are not uniform).

Recipe switches (the paper's groups):

- ``basic``: the 7 non-identity symmetries of the square (rotations, flips, transposes)
- ``size``: 2x upscaling of both sides, of height only, of width only
- ``chain``: each basic symmetry followed by a 2x upscale
- ``repeat``: 2x tiling vertically, horizontally, and both
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from .data import MAX_SIDE, ArcExample, ArcTask, Grid

AXES = ("both", "height", "width")


class NotInvertibleError(ValueError):
    """The grid is not an output of this transform, or the transform has no inverse."""


class Transform:
    """A deterministic grid -> grid map, extended to tasks by mapping every grid."""

    name: str = "transform"
    invertible: bool = False

    def apply(self, grid: Grid) -> Grid:
        raise NotImplementedError

    def inverse(self, grid: Grid) -> Grid:
        raise NotInvertibleError(f"{self.name} has no inverse")

    def apply_task(self, task: ArcTask) -> ArcTask:
        train = tuple(ArcExample(self.apply(ex.input), self.apply(ex.output)) for ex in self.train_order(task))
        test_in = tuple(self.apply(g) for g in task.test_inputs)
        test_out = None if task.test_outputs is None else tuple(self.apply(g) for g in task.test_outputs)
        return replace(task, train=train, test_inputs=test_in, test_outputs=test_out)

    def train_order(self, task: ArcTask) -> Sequence[ArcExample]:
        return task.train

    def __repr__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.name == other.name

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.name))


# ------------------------------------------------------------------------------------ geometric


def _rot90(g: Grid) -> Grid:  # clockwise
    return tuple(zip(*g[::-1]))


def _transpose(g: Grid) -> Grid:
    return tuple(zip(*g))


_GEOMETRIC = {
    "identity": (lambda g: g, "identity"),
    "rot90": (_rot90, "rot270"),
    "rot180": (lambda g: tuple(row[::-1] for row in g[::-1]), "rot180"),
    "rot270": (lambda g: tuple(zip(*g))[::-1], "rot90"),
    # Mirror left-right: each row reversed.
    "flip_horizontal": (lambda g: tuple(row[::-1] for row in g), "flip_horizontal"),
    # Mirror top-bottom: row order reversed.
    "flip_vertical": (lambda g: g[::-1], "flip_vertical"),
    "transpose": (_transpose, "transpose"),
    # Reflection across the anti-diagonal.
    "anti_transpose": (lambda g: tuple(zip(*(row[::-1] for row in g[::-1]))), "anti_transpose"),
}


class Geometric(Transform):
    """One of the 8 symmetries of the square, named as in ``GEOMETRIC_NAMES`` (rotations clockwise)."""

    invertible = True

    def __init__(self, name: str):
        if name not in _GEOMETRIC:
            raise ValueError(f"unknown geometric transform {name!r}; choose from {sorted(_GEOMETRIC)}")
        self.name = name

    def apply(self, grid: Grid) -> Grid:
        return tuple(tuple(r) for r in _GEOMETRIC[self.name][0](grid))

    def inverse(self, grid: Grid) -> Grid:
        return Geometric(_GEOMETRIC[self.name][1]).apply(grid)


GEOMETRIC_NAMES = tuple(_GEOMETRIC)
IDENTITY = Geometric("identity")


# ------------------------------------------------------------------------------------ size, tiling


def _check_axis(axis: str) -> str:
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    return axis


def _factors(axis: str, factor: int) -> tuple[int, int]:
    return (factor if axis != "width" else 1), (factor if axis != "height" else 1)


class Upscale(Transform):
    """Each cell becomes a ``factor``-sized block along ``axis``; inverse downsamples uniform blocks."""

    invertible = True

    def __init__(self, factor: int = 2, axis: str = "both"):
        if factor < 2:
            raise ValueError("upscale factor must be at least 2")
        self.factor, self.axis = factor, _check_axis(axis)
        self.name = f"upscale{factor}_{axis}"

    def apply(self, grid: Grid) -> Grid:
        fh, fw = _factors(self.axis, self.factor)
        return tuple(tuple(c for c in row for _ in range(fw)) for row in grid for _ in range(fh))

    def inverse(self, grid: Grid) -> Grid:
        fh, fw = _factors(self.axis, self.factor)
        if len(grid) % fh or len(grid[0]) % fw:
            raise NotInvertibleError(f"{self.name}: shape {len(grid)}x{len(grid[0])} not divisible by {fh}x{fw}")
        small = tuple(tuple(row[::fw]) for row in grid[::fh])
        if self.apply(small) != grid:
            raise NotInvertibleError(f"{self.name}: blocks are not uniform")
        return small


class Repeat(Transform):
    """Tile the grid ``times`` over along ``axis``; inverse keeps the first tile if all tiles agree."""

    invertible = True

    def __init__(self, times: int = 2, axis: str = "both"):
        if times < 2:
            raise ValueError("repeat count must be at least 2")
        self.times, self.axis = times, _check_axis(axis)
        self.name = f"repeat{times}_{axis}"

    def apply(self, grid: Grid) -> Grid:
        th, tw = _factors(self.axis, self.times)
        return tuple(tuple(row) * tw for row in grid) * th

    def inverse(self, grid: Grid) -> Grid:
        th, tw = _factors(self.axis, self.times)
        if len(grid) % th or len(grid[0]) % tw:
            raise NotInvertibleError(f"{self.name}: shape {len(grid)}x{len(grid[0])} not divisible by {th}x{tw}")
        tile = tuple(row[: len(row) // tw] for row in grid[: len(grid) // th])
        if self.apply(tile) != grid:
            raise NotInvertibleError(f"{self.name}: tiles differ")
        return tile


class Chain(Transform):
    """Apply ``transforms`` left to right; the inverse undoes them right to left."""

    def __init__(self, *transforms: Transform):
        if not transforms:
            raise ValueError("chain needs at least one transform")
        self.transforms = transforms
        self.invertible = all(t.invertible for t in transforms)
        self.name = "+".join(t.name for t in transforms)

    def apply(self, grid: Grid) -> Grid:
        for t in self.transforms:
            grid = t.apply(grid)
        return grid

    def inverse(self, grid: Grid) -> Grid:
        for t in reversed(self.transforms):
            grid = t.inverse(grid)
        return grid

    def train_order(self, task: ArcTask) -> Sequence[ArcExample]:
        train: Sequence[ArcExample] = task.train
        for t in self.transforms:
            train = t.train_order(replace(task, train=tuple(train)))
        return train


# ------------------------------------------------------------------------------------ permutations


class ColorPermutation(Transform):
    """Recolour every cell by ``mapping[colour]`` (a permutation of 0-9).

    ``random`` keeps 0 fixed by default: in ARC, 0 (black) is the background of nearly every task
    and many rules are about "empty" cells, so moving it changes what the task looks like far more
    than swapping two foreground colours, and teaches the model a background it never sees at test
    time.
    """

    invertible = True

    def __init__(self, mapping: Sequence[int]):
        if sorted(mapping) != list(range(10)):
            raise ValueError(f"colour mapping must be a permutation of 0-9, got {list(mapping)}")
        self.mapping = tuple(mapping)
        self.name = "colors" + "".join(map(str, self.mapping))

    @classmethod
    def random(cls, rng: random.Random, keep_zero: bool = True) -> ColorPermutation:
        colors = list(range(1, 10) if keep_zero else range(10))
        rng.shuffle(colors)
        return cls([0] + colors if keep_zero else colors)

    def apply(self, grid: Grid) -> Grid:
        m = self.mapping
        return tuple(tuple(m[c] for c in row) for row in grid)

    def inverse(self, grid: Grid) -> Grid:
        back = [0] * 10
        for src, dst in enumerate(self.mapping):
            back[dst] = src
        return tuple(tuple(back[c] for c in row) for row in grid)


class PermuteExamples(Transform):
    """Reorder the demonstrations of a task; grids are untouched (so ``inverse`` is the identity)."""

    invertible = True

    def __init__(self, order: Sequence[int]):
        if sorted(order) != list(range(len(order))):
            raise ValueError(f"order must be a permutation of 0..n-1, got {list(order)}")
        self.order = tuple(order)
        self.name = "order" + "-".join(map(str, self.order))

    @classmethod
    def random(cls, n: int, rng: random.Random) -> PermuteExamples:
        order = list(range(n))
        rng.shuffle(order)
        return cls(order)

    def apply(self, grid: Grid) -> Grid:
        return grid

    def inverse(self, grid: Grid) -> Grid:
        return grid

    def train_order(self, task: ArcTask) -> Sequence[ArcExample]:
        if len(self.order) != len(task.train):
            raise ValueError(f"{self.name} needs {len(self.order)} demonstrations, task has {len(task.train)}")
        return [task.train[i] for i in self.order]


# ------------------------------------------------------------------------------------ recipe groups


GROUP_NAMES = ("basic", "size", "chain", "repeat")


def group_transforms(group: str) -> list[Transform]:
    """The transforms a recipe switch turns on (fresh objects, in a fixed order)."""
    basic = [Geometric(n) for n in GEOMETRIC_NAMES if n != "identity"]
    if group == "basic":
        return basic
    if group == "size":
        return [Upscale(2, axis) for axis in AXES]
    if group == "chain":
        return [Chain(g, Upscale(2, "both")) for g in basic]
    if group == "repeat":
        return [Repeat(2, axis) for axis in AXES]
    raise ValueError(f"unknown augmentation group {group!r}; choose from {GROUP_NAMES}")


def transforms_for(groups: Iterable[str]) -> list[Transform]:
    seen: dict[Transform, None] = {}
    for group in groups:
        for t in group_transforms(group):
            seen.setdefault(t)
    return list(seen)


def voting_transforms() -> list[Transform]:
    """Transforms to predict under and vote over at test time: identity first, then the symmetries.

    They are bijections, so every prediction can be mapped back and none is lost to an inverse.
    """
    return [Geometric(n) for n in GEOMETRIC_NAMES]


# ------------------------------------------------------------------------------------ task building


def task_fits(task: ArcTask) -> bool:
    return all(len(g) <= MAX_SIDE and len(g[0]) <= MAX_SIDE for g in task.all_grids())


def leave_k_out(task: ArcTask, k: int = 1) -> list[ArcTask]:
    """Smaller tasks made from the demonstrations alone.

    For each set of ``k`` held-out demonstrations, each held-out one in turn becomes the single
    test pair of a task whose demonstrations are the other ``n - k`` (order kept). Yields
    ``C(n, k) * k`` tasks; none when fewer than ``k + 1`` demonstrations exist.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    n = len(task.train)
    out = []
    for held in itertools.combinations(range(n), k):
        rest = tuple(ex for i, ex in enumerate(task.train) if i not in held)
        if not rest:
            continue
        for h in held:
            ex = task.train[h]
            suffix = "-".join(map(str, held)) + (f"/{h}" if k > 1 else "")
            out.append(ArcTask(f"{task.id}:loo{suffix}", rest, (ex.input,), (ex.output,)))
    return out


def task_key(task: ArcTask) -> tuple:
    """Content identity of a task for dedupe: id and demonstration order excluded (a reordering
    teaches nothing a shuffle would not)."""
    return (tuple(sorted((ex.input, ex.output) for ex in task.train)), task.test_inputs, task.test_outputs)


def dedupe(tasks: Iterable[ArcTask]) -> list[ArcTask]:
    """Drop tasks equal to an earlier one up to demonstration order; first kept, order preserved."""
    seen: set = set()
    out = []
    for t in tasks:
        key = task_key(t)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


@dataclass(frozen=True)
class AugmentConfig:
    """How many and which training tasks one ARC task becomes.

    ``leave_two_out`` adds tasks with two fewer demonstrations. ``color_permutations`` extra copies of
    each task get a random colour permutation (0 kept fixed unless ``permute_background``).
    ``shuffle_examples`` gives every produced task a random demonstration order. ``max_tasks`` caps
    the result after dedupe: the untransformed leave-out tasks are kept first, the rest sampled.
    """

    leave_two_out: bool = False
    color_permutations: int = 0
    permute_background: bool = False
    shuffle_examples: bool = True
    max_tasks: int | None = None

    def __post_init__(self) -> None:
        if self.color_permutations < 0:
            raise ValueError("color_permutations must be >= 0")
        if self.max_tasks is not None and self.max_tasks < 1:
            raise ValueError("max_tasks must be >= 1 or None")


def build_training_tasks(
    task: ArcTask, groups: Iterable[str], seed: int, config: AugmentConfig = AugmentConfig()
) -> list[ArcTask]:
    """Leave-out tasks from ``task``'s demonstrations, augmented by the transforms of ``groups``.

    Deterministic in (task, groups, seed, config). Augmented tasks with any grid over 30 per side
    are dropped. Test outputs of ``task`` are never used.
    """
    rng = random.Random(seed)
    base = leave_k_out(task, 1)
    if config.leave_two_out:
        base += leave_k_out(task, 2)
    transforms = transforms_for(groups)

    originals: list[ArcTask] = []
    augmented: list[ArcTask] = []
    for b in base:
        for t in [IDENTITY, *transforms]:
            variant = t.apply_task(b)
            if not task_fits(variant):
                continue
            variant = replace(variant, id=f"{b.id}|{t.name}")
            copies = [variant]
            for _ in range(config.color_permutations):
                perm = ColorPermutation.random(rng, keep_zero=not config.permute_background)
                copies.append(replace(perm.apply_task(variant), id=f"{variant.id}|{perm.name}"))
            if config.shuffle_examples:
                copies = [PermuteExamples.random(len(c.train), rng).apply_task(c) for c in copies]
            target = originals if t is IDENTITY else augmented
            target.append(copies[0])
            augmented.extend(copies[1:])

    originals, augmented = dedupe(originals), dedupe(augmented)
    original_keys = {task_key(o) for o in originals}
    augmented = [t for t in augmented if task_key(t) not in original_keys]
    cap = config.max_tasks
    if cap is None or len(originals) + len(augmented) <= cap:
        return originals + augmented
    if len(originals) >= cap:
        return _sample_in_order(originals, cap, rng)
    return originals + _sample_in_order(augmented, cap - len(originals), rng)


def _sample_in_order(items: list[ArcTask], k: int, rng: random.Random) -> list[ArcTask]:
    keep = sorted(rng.sample(range(len(items)), k))
    return [items[i] for i in keep]
