import json
from pathlib import Path

import pytest

from core.errors import UserError
from pipeline.tasks.arc.data import (
    ArcExample,
    ArcTask,
    as_grid,
    grid_problem,
    load_submission,
    load_tasks,
    make_submission,
    parse_tasks,
    validate_submission,
    write_submission,
)

ARC_DIR = Path("/work/shared/data/seal/few-shot/data")
needs_arc = pytest.mark.skipif(
    not ARC_DIR.is_dir(), reason=f"ARC data folder {ARC_DIR} is absent (shared data not mounted)"
)


def _challenge(train=None, test=None):
    return {
        "train": train if train is not None else [{"input": [[1, 2], [3, 4]], "output": [[4]]}] * 3,
        "test": test if test is not None else [{"input": [[0, 1]]}],
    }


def _error(challenges, solutions=None) -> str:
    with pytest.raises(UserError) as e:
        parse_tasks(challenges, solutions)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------- real files


@needs_arc
@pytest.mark.parametrize(
    "challenges, solutions, count",
    [
        ("arc-agi_training_challenges_filtered_1B_training_set.json", "arc-agi_training_solutions_filtered_1B_training_set.json", 12),
        ("arc-agi_evaluation_challenges_filtered_1B_eval_set.json", "arc-agi_evaluation_solutions_filtered_1B_eval_set.json", 10),
        ("arc-agi_training_challenges.json", "arc-agi_training_solutions.json", 400),
    ],
)
def test_load_real_files(challenges, solutions, count):
    tasks = load_tasks(ARC_DIR / challenges, ARC_DIR / solutions)
    assert len(tasks) == count
    raw = json.loads((ARC_DIR / challenges).read_text())
    assert list(tasks) == list(raw)  # file order kept
    for task_id, task in tasks.items():
        assert task.id == task_id
        assert task.train and task.test_inputs
        assert len(task.test_outputs) == len(task.test_inputs)
        assert all(grid_problem(g) is None for g in task.all_grids())
        assert task.train[0].input == as_grid(raw[task_id]["train"][0]["input"])


@needs_arc
def test_filtered_challenges_with_full_solutions_file():
    tasks = load_tasks(
        ARC_DIR / "arc-agi_training_challenges_filtered_1B_training_set.json",
        ARC_DIR / "arc-agi_training_solutions.json",
    )
    assert len(tasks) == 12 and all(t.test_outputs for t in tasks.values())


@needs_arc
def test_challenges_without_solutions():
    tasks = load_tasks(ARC_DIR / "arc-agi_evaluation_challenges_filtered_1B_eval_set.json")
    assert all(t.test_outputs is None for t in tasks.values())


@needs_arc
def test_sample_submission_is_valid():
    sub = load_submission(ARC_DIR / "sample_submission.json")
    assert len(sub) == 100


# ------------------------------------------------------------------------------------- grid errors


def test_ragged_row_message_names_task_and_field():
    train = [{"input": [[1]], "output": [[1]]}] * 2 + [{"input": [[1]], "output": [[1, 2, 3]] * 3 + [[1, 2, 3, 4]]}]
    assert _error({"007bbfb7": _challenge(train=train)}) == "task 007bbfb7: train[2].output row 3 has 4 cells, expected 3"


@pytest.mark.parametrize(
    "grid, expected",
    [
        ([[1]] * 31, "has 31 rows, expected 1 to 30"),
        ([], "has 0 rows, expected 1 to 30"),
        ([[]], "row 0 has 0 cells, expected 1 to 30"),
        ([[0] * 31], "row 0 has 31 cells, expected 1 to 30"),
        ([[1, 10]], "row 0 cell 1 is 10, expected an integer 0-9"),
        ([[1, -1]], "row 0 cell 1 is -1, expected an integer 0-9"),
        ([[1], [True]], "row 1 cell 0 is True, expected an integer 0-9"),
        ([[1.0]], "row 0 cell 0 is 1.0, expected an integer 0-9"),
        ([["1"]], "row 0 cell 0 is '1', expected an integer 0-9"),
        ("123", "is not a list of rows (got str)"),
        ([[1], 2], "row 1 is not a list of cells (got int)"),
        (None, "is not a list of rows (got NoneType)"),
    ],
)
def test_bad_test_input_grid(grid, expected):
    assert _error({"abc": _challenge(test=[{"input": grid}])}) == f"task abc: test[0].input {expected}"


@pytest.mark.parametrize(
    "challenge, expected",
    [
        ({"test": [{"input": [[1]]}]}, "task t has no 'train'"),
        (_challenge(train=[]), "task t: train is empty"),
        ({"train": {}, "test": []}, "task t: train is not a list (got dict)"),
        (_challenge(test=[]), "task t: test is empty"),
        (_challenge(test=[{"output": [[1]]}]), "task t: test[0] has no 'input'"),
        (_challenge(train=[{"input": [[1]]}]), "task t: train[0] has no 'output'"),
        (_challenge(train=[[1]]), "task t: train[0] is not an object (got list)"),
        ([1, 2], "task t is not an object (got list)"),
    ],
)
def test_bad_task_structure(challenge, expected):
    assert _error({"t": challenge}) == expected


def test_solution_errors():
    challenges = {"a": _challenge(), "b": _challenge()}
    assert _error(challenges, {"a": [[[1]]]}) == "task b: no entry in the solutions for challenges"
    assert _error(challenges, {"a": [[[1]], [[2]]], "b": [[[1]]]}) == "task a: solutions give 2 grid(s) for 1 test input(s)"
    assert _error(challenges, {"a": [[[1]]], "b": [[[1, 2], [3]]]}) == "task b: solutions[0] row 1 has 1 cells, expected 2"
    assert _error([1], None) == "challenges: expected an object of task id -> task (got list)"


def test_solutions_beyond_challenges_are_ignored():
    tasks = parse_tasks({"a": _challenge()}, {"a": [[[7]]], "zzz": [[[1]]]})
    assert list(tasks) == ["a"] and tasks["a"].test_outputs == (((7,),),)


def test_file_errors(tmp_path):
    with pytest.raises(UserError, match="ARC challenges file not found: .*nope.json"):
        load_tasks(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": {"train": [}')
    with pytest.raises(UserError, match=r"ARC challenges file .*bad.json is not valid JSON: .*line 1"):
        load_tasks(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"a": _challenge()}))
    with pytest.raises(UserError, match="ARC solutions file not found"):
        load_tasks(good, tmp_path / "missing_solutions.json")


def test_grids_are_immutable_tuples(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"a": _challenge()}))
    task = load_tasks(path)["a"]
    assert task.train[0].input == ((1, 2), (3, 4))
    assert isinstance(task.train[0].input[0], tuple)
    with pytest.raises(AttributeError):
        task.id = "b"


def test_task_rejects_mismatched_test_outputs():
    with pytest.raises(ValueError, match="2 test outputs for 1 test inputs"):
        ArcTask("x", (ArcExample(((1,),), ((1,),)),), (((1,),),), (((1,),), ((2,),)))


# ------------------------------------------------------------------------------------- submission


def _tasks():
    return parse_tasks({"a": _challenge(), "b": _challenge(test=[{"input": [[1]]}, {"input": [[2]]}])})


def test_make_submission_pads_to_two_attempts():
    sub = make_submission({"a": [[((1, 2),), [[3]]]], "b": [[[[5]]], []]})
    assert sub == {
        "a": [{"attempt_1": [[1, 2]], "attempt_2": [[3]]}],
        "b": [{"attempt_1": [[5]], "attempt_2": [[5]]}, {"attempt_1": [[0]], "attempt_2": [[0]]}],
    }
    validate_submission(sub, _tasks())
    with pytest.raises(ValueError, match="at most 2"):
        make_submission({"a": [[[[1]], [[2]], [[3]]]]})


def test_write_and_load_submission(tmp_path):
    sub = make_submission({"a": [[[[1]]]], "b": [[[[1]]], [[[2]]]]})
    path = write_submission(tmp_path / "out" / "submission.json", sub, _tasks())
    assert load_submission(path, _tasks()) == sub
    with pytest.raises(UserError, match="already exists"):
        write_submission(path, sub)
    write_submission(path, sub, overwrite=True)
    assert [p.name for p in path.parent.iterdir()] == ["submission.json"]  # no temp files left


@pytest.mark.parametrize(
    "sub, expected",
    [
        ([], "submission: expected an object of task id -> attempts (got list)"),
        ({"a": []}, "submission task a: expected a non-empty list with one item per test input"),
        ({"a": [{"attempt_1": [[1]]}]}, "submission task a: item 0 must have exactly attempt_1 and attempt_2 (got ['attempt_1'])"),
        ({"a": [{"attempt_1": [[1]], "attempt_2": [[1, 2], [1]]}]}, "submission task a: item 0 attempt_2 row 1 has 1 cells, expected 2"),
        ({"a": [{"attempt_1": [[1]], "attempt_2": [[1]]}] * 2}, "submission task a: 2 item(s) for 1 test input(s)"),
        ({"zz": [{"attempt_1": [[1]], "attempt_2": [[1]]}]}, "submission task zz: not among the 2 tasks"),
        ({"a": [{"attempt_1": [[1]], "attempt_2": [[1]]}]}, "submission: no entry for task(s) b"),
    ],
)
def test_validate_submission_errors(sub, expected):
    with pytest.raises(UserError) as e:
        validate_submission(sub, _tasks())
    assert str(e.value) == expected
