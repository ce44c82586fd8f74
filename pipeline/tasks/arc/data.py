"""ARC-AGI tasks: load and validate challenge / solution files, write and check submissions.

Grids are tuples of tuples of ints (``Grid``): immutable, so an augmentation can never alias and
mutate a task it was built from, and hashable, so dedupe and voting can use them as dict keys.
Functions that take grids from outside accept any nested sequence and convert with ``as_grid``;
``grid_to_list`` gives the JSON form back.

Every problem with user-supplied data raises ``UserError`` with one line naming the file or task and
the field, indices 0-based as in the JSON (``task 007bbfb7: train[2].output row 3 has 4 cells,
expected 3``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError

Grid = tuple[tuple[int, ...], ...]

MAX_SIDE = 30
COLORS = range(10)


# --------------------------------------------------------------------------------------------- grids


def _plain(grid: Any) -> Any:
    # numpy arrays (and their numpy-int cells) become nested lists of Python ints.
    return grid.tolist() if hasattr(grid, "tolist") and not isinstance(grid, (list, tuple)) else grid


def grid_problem(grid: Any) -> str | None:
    """What is wrong with ``grid`` as an ARC grid, or None when it is valid."""
    grid = _plain(grid)
    if not isinstance(grid, Sequence) or isinstance(grid, (str, bytes)):
        return f"is not a list of rows (got {type(grid).__name__})"
    if not 1 <= len(grid) <= MAX_SIDE:
        return f"has {len(grid)} rows, expected 1 to {MAX_SIDE}"
    width = None
    for r, row in enumerate(grid):
        if not isinstance(row, Sequence) or isinstance(row, (str, bytes)):
            return f"row {r} is not a list of cells (got {type(row).__name__})"
        if width is None:
            if not 1 <= len(row) <= MAX_SIDE:
                return f"row {r} has {len(row)} cells, expected 1 to {MAX_SIDE}"
            width = len(row)
        elif len(row) != width:
            return f"row {r} has {len(row)} cells, expected {width}"
        for c, cell in enumerate(row):
            # bool is an int subclass; True would otherwise pass as colour 1.
            if isinstance(cell, bool) or not isinstance(cell, int) or cell not in COLORS:
                return f"row {r} cell {c} is {cell!r}, expected an integer 0-9"
    return None


def is_valid_grid(grid: Any) -> bool:
    return grid_problem(grid) is None


def as_grid(grid: Any, where: str = "grid") -> Grid:
    """Validate and convert to the immutable form (numpy arrays accepted); ``where`` prefixes the UserError message."""
    grid = _plain(grid)
    problem = grid_problem(grid)
    if problem is not None:
        raise UserError(f"{where} {problem}")
    return tuple(tuple(row) for row in grid)


def grid_to_list(grid: Grid) -> list[list[int]]:
    return [list(row) for row in grid]


def grid_shape(grid: Grid) -> tuple[int, int]:
    return len(grid), len(grid[0])


# --------------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class ArcExample:
    input: Grid
    output: Grid


@dataclass(frozen=True)
class ArcTask:
    """One ARC task: demonstrations, test inputs, and the test outputs when known."""

    id: str
    train: tuple[ArcExample, ...]
    test_inputs: tuple[Grid, ...]
    test_outputs: tuple[Grid, ...] | None = None

    def __post_init__(self) -> None:
        # Library callers build tasks too (augmentation, leave-one-out); catch mismatches here.
        if self.test_outputs is not None and len(self.test_outputs) != len(self.test_inputs):
            raise ValueError(
                f"task {self.id}: {len(self.test_outputs)} test outputs for {len(self.test_inputs)} test inputs"
            )

    @property
    def test_examples(self) -> tuple[ArcExample, ...]:
        if self.test_outputs is None:
            raise ValueError(f"task {self.id} has no test outputs")
        return tuple(ArcExample(i, o) for i, o in zip(self.test_inputs, self.test_outputs))

    def all_grids(self) -> list[Grid]:
        grids = [g for ex in self.train for g in (ex.input, ex.output)]
        grids += list(self.test_inputs)
        grids += list(self.test_outputs or ())
        return grids


def _field(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, Mapping):
        raise UserError(f"{where} is not an object (got {type(obj).__name__})")
    if key not in obj:
        raise UserError(f"{where} has no {key!r}")
    return obj[key]


def _list(obj: Any, where: str) -> list:
    if not isinstance(obj, list):
        raise UserError(f"{where} is not a list (got {type(obj).__name__})")
    if not obj:
        raise UserError(f"{where} is empty")
    return obj


def parse_task(task_id: str, challenge: Any, solution: Any = None) -> ArcTask:
    """Build an ``ArcTask`` from one challenge entry and, optionally, its solution list."""
    where = f"task {task_id}:"
    train_raw = _list(_field(challenge, "train", f"task {task_id}"), f"{where} train")
    test_raw = _list(_field(challenge, "test", f"task {task_id}"), f"{where} test")
    train = tuple(
        ArcExample(
            as_grid(_field(ex, "input", f"{where} train[{i}]"), f"{where} train[{i}].input"),
            as_grid(_field(ex, "output", f"{where} train[{i}]"), f"{where} train[{i}].output"),
        )
        for i, ex in enumerate(train_raw)
    )
    test_inputs = tuple(
        as_grid(_field(ex, "input", f"{where} test[{i}]"), f"{where} test[{i}].input")
        for i, ex in enumerate(test_raw)
    )
    test_outputs = None
    if solution is not None:
        sols = _list(solution, f"{where} solutions")
        if len(sols) != len(test_inputs):
            raise UserError(
                f"{where} solutions give {len(sols)} grid(s) for {len(test_inputs)} test input(s)"
            )
        test_outputs = tuple(as_grid(g, f"{where} solutions[{i}]") for i, g in enumerate(sols))
    return ArcTask(task_id, train, test_inputs, test_outputs)


def parse_tasks(challenges: Any, solutions: Any = None, source: str = "challenges") -> dict[str, ArcTask]:
    """In-memory counterpart of ``load_tasks``; ``source`` names the data in error messages.

    Solution ids not among the challenges are ignored, so a filtered challenge file can be paired
    with the full solutions file; a challenge without a solution is an error.
    """
    if not isinstance(challenges, Mapping):
        raise UserError(f"{source}: expected an object of task id -> task (got {type(challenges).__name__})")
    if solutions is not None and not isinstance(solutions, Mapping):
        raise UserError(f"solutions for {source}: expected an object of task id -> grids")
    tasks = {}
    for task_id, challenge in challenges.items():
        solution = None
        if solutions is not None:
            if task_id not in solutions:
                raise UserError(f"task {task_id}: no entry in the solutions for {source}")
            solution = solutions[task_id]
        tasks[task_id] = parse_task(task_id, challenge, solution)
    return tasks


def read_json(path: str | os.PathLike, what: str) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {what} file {path}: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} file {path} is not valid JSON: {e}") from None


def load_tasks(
    challenges_path: str | os.PathLike, solutions_path: str | os.PathLike | None = None
) -> dict[str, ArcTask]:
    """Load ARC challenges (and solutions) in the Kaggle ARC-AGI layout, in file order."""
    challenges = read_json(challenges_path, "ARC challenges")
    solutions = None if solutions_path is None else read_json(solutions_path, "ARC solutions")
    return parse_tasks(challenges, solutions, source=str(challenges_path))


# ---------------------------------------------------------------------------------------- submission


def make_submission(
    attempts: Mapping[str, Sequence[Sequence[Any]]], fallback: Grid = ((0,),)
) -> dict[str, list[dict[str, list[list[int]]]]]:
    """``{task_id: [[attempt grids] per test input]}`` -> the ARC submission object.

    The format demands exactly two grids per test input: one attempt is repeated as the second,
    and a test input without any attempt gets ``fallback`` twice (an answer that is almost surely
    wrong, which is what "no prediction" should score).
    """
    out: dict[str, list[dict[str, list[list[int]]]]] = {}
    for task_id, per_test in attempts.items():
        entries = []
        for i, grids in enumerate(per_test):
            grids = [as_grid(g, f"task {task_id}: attempts for test[{i}]") for g in grids]
            if len(grids) > 2:
                raise ValueError(f"task {task_id}: {len(grids)} attempts for test[{i}], at most 2 allowed")
            grids = (grids + grids[:1] + [fallback, fallback])[:2]
            entries.append({"attempt_1": grid_to_list(grids[0]), "attempt_2": grid_to_list(grids[1])})
        out[task_id] = entries
    return out


def validate_submission(submission: Any, tasks: Mapping[str, ArcTask] | None = None) -> None:
    """Raise UserError unless ``submission`` is a well-formed ARC submission.

    With ``tasks``, also check that every task has an entry with one item per test input and no
    entry names an unknown task.
    """
    if not isinstance(submission, Mapping):
        raise UserError(f"submission: expected an object of task id -> attempts (got {type(submission).__name__})")
    for task_id, entries in submission.items():
        where = f"submission task {task_id}"
        if not isinstance(entries, list) or not entries:
            raise UserError(f"{where}: expected a non-empty list with one item per test input")
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or set(entry) != {"attempt_1", "attempt_2"}:
                keys = sorted(entry) if isinstance(entry, Mapping) else type(entry).__name__
                raise UserError(f"{where}: item {i} must have exactly attempt_1 and attempt_2 (got {keys})")
            for key in ("attempt_1", "attempt_2"):
                as_grid(entry[key], f"{where}: item {i} {key}")
        if tasks is not None:
            if task_id not in tasks:
                raise UserError(f"{where}: not among the {len(tasks)} tasks")
            expected = len(tasks[task_id].test_inputs)
            if len(entries) != expected:
                raise UserError(f"{where}: {len(entries)} item(s) for {expected} test input(s)")
    if tasks is not None:
        missing = [t for t in tasks if t not in submission]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise UserError(f"submission: no entry for task(s) {', '.join(missing[:3])}{more}")


def write_submission(
    path: str | os.PathLike,
    submission: Mapping[str, Any],
    tasks: Mapping[str, ArcTask] | None = None,
    overwrite: bool = False,
) -> Path:
    """Validate and write atomically (a crash never leaves half a file behind)."""
    path = Path(path)
    validate_submission(submission, tasks)
    if path.exists() and not overwrite:
        raise UserError(f"submission file already exists: {path} (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(submission, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_submission(path: str | os.PathLike, tasks: Mapping[str, ArcTask] | None = None) -> dict:
    submission = read_json(path, "ARC submission")
    validate_submission(submission, tasks)
    return submission
