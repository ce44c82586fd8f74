"""`seal-tt adapt-student --task arc` end to end on tiny models and the paper's filtered evaluation file."""

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.tasks.arc.data import load_submission, load_tasks

ARC_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/seal/few-shot/data"
CHALLENGES = ARC_DIR / "arc-agi_evaluation_challenges_filtered_1B_eval_set.json"
SOLUTIONS = ARC_DIR / "arc-agi_evaluation_solutions_filtered_1B_eval_set.json"
TWO_TASKS = ("66e6c45b", "68b67ca3")  # the two smallest tasks of the file: seconds on CPU

FALLBACK = json.dumps({"use_basic": True, "use_size": False, "use_chain": False, "use_repeat": False,
                       "loss": "output", "learning_rate": 1e-3, "epochs": 1})
CONFIG = Path(__file__).resolve().parents[1] / "configs/adapt_arc.yaml"
FAST = ["--set", "teacher.generation.num_samples=2", "--set", "teacher.generation.max_new_tokens=16",
        "--set", "arc.resamples=1", "--set", "arc.voting_transforms=2",
        "--set", "student.lora.r=4", "--set", "student.lora.alpha=8"]


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.fixture
def two_tasks(tmp_path):
    """Two tasks of the filtered evaluation file, verbatim; the full solutions file goes with them."""
    if not CHALLENGES.exists():
        pytest.skip(f"shared data not found at {CHALLENGES}")
    raw = json.loads(CHALLENGES.read_text())
    path = tmp_path / "two_tasks.json"
    path.write_text(json.dumps({k: raw[k] for k in TWO_TASKS}))
    return path


def test_adapt_student_arc_on_two_tasks(tiny_models, two_tasks, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["adapt-student", "--task", "arc", "--arc-tasks", two_tasks, "--arc-solutions", SOLUTIONS,
            "--teacher", tiny_models["llama"], "--student", tiny_models["qwen2"], "--output", out, "--quiet",
            "--config", CONFIG, *FAST,
            "--set", f"arc.fallback_recipe='{FALLBACK}'"]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert "pass@2: " in stdout and "arc tasks: 2" in stdout

    tasks = load_tasks(two_tasks, SOLUTIONS)
    submission = load_submission(out / "predictions.json", tasks)  # validates the ARC submission format
    assert list(submission) == list(TWO_TASKS)

    report = json.loads((out / "report.json").read_text())
    assert report["tasks"] == 2 and report["self_edits"] == 4 and report["solved"] in (0, 1, 2)
    for entry in report["per_task"]:
        # a random teacher writes no valid JSON: every sample is recorded invalid, the fallback is used and named
        assert entry["recipe_source"] == "fallback" and entry["adapted"] and entry["recipe"]["use_basic"] is True
        assert len(entry["invalid_reasons"]) == 2 and all("invalid recipe" in r for r in entry["invalid_reasons"])
        assert entry["training"]["steps"] > 0 and isinstance(entry["solved"], bool)
    edits = [json.loads(line) for line in (out / "self_edits.jsonl").read_text().splitlines()]
    assert len(edits) == 4 and all(e["attempts"] == 2 and len(e["rejected"]) == 1 for e in edits)
    assert (out / "config.yaml").exists()

    # a finished run is reused; a run killed mid-way resumes with identical results
    code, _, err = run_cli([a for a in args if a != "--quiet"], capsys)
    assert code == 0 and "complete" in err
    results = (out / "results.jsonl").read_text().splitlines()
    predictions = (out / "predictions.json").read_text()
    (out / "report.json").unlink()
    (out / "predictions.json").unlink()
    (out / "results.jsonl").write_text(results[0] + "\n" + results[1][:30])  # torn second record
    assert run_cli(args, capsys)[0] == 0
    assert (out / "predictions.json").read_text() == predictions

    def strip_times(line):
        rec = {k: v for k, v in json.loads(line).items() if k != "seconds"}
        rec["training"].pop("seconds")
        return rec

    assert [strip_times(r) for r in (out / "results.jsonl").read_text().splitlines()] == [strip_times(r) for r in results]


def test_without_a_valid_recipe_the_task_is_not_adapted(tiny_models, two_tasks, tmp_path, capsys):
    """Same model as teacher and student; no fallback: nothing is trained, the prediction is the base model's."""
    out = tmp_path / "run"
    code, stdout, err = run_cli(["adapt-student", "--task", "arc", "--arc-tasks", two_tasks, "--limit", 1,
                                 "--teacher", tiny_models["llama"], "--student", tiny_models["llama"],
                                 "--output", out, "--quiet", *FAST], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    (entry,) = report["per_task"]
    assert not entry["adapted"] and entry["recipe"] is None and entry["training"] is None
    assert "no valid recipe among 2" in entry["reason"] and entry["solved"] is None
    assert report["solved"] is None and "pass@2" not in stdout
    first = TWO_TASKS[0]
    load_submission(out / "predictions.json", {first: load_tasks(two_tasks)[first]})


class ScriptedTeacher:
    """Stands in for the teacher model: junk for sample 0 (and for every redraw), an over-budget recipe for 1, a good
    recipe for 2."""

    def __init__(self, *args, **kwargs):
        self.calls = 0

    def sample(self, prompts, settings, seeds):
        from teacher.backends import Sample

        self.calls += 1
        good = json.loads(FALLBACK) | {"use_basic": False, "epochs": 2}
        texts = ["{not json", json.dumps(good | {"use_chain": True, "epochs": 10}), "Sure:\n" + json.dumps(good)]
        if self.calls > 1:
            texts = ["{still not json"] * settings.num_samples
        return [[Sample(t, 20, True) for t in texts] for _ in prompts]

    def close(self):
        pass


def test_the_first_valid_teacher_recipe_is_used(tiny_models, two_tasks, tmp_path, capsys, monkeypatch):
    import teacher.backends

    monkeypatch.setattr(teacher.backends, "make_backend", lambda kind, model, **kw: ScriptedTeacher())
    out = tmp_path / "run"
    code, stdout, err = run_cli(["adapt-student", "--task", "arc", "--arc-tasks", two_tasks, "--limit", 1,
                                 "--arc-solutions", SOLUTIONS, "--teacher", tiny_models["llama"],
                                 "--student", tiny_models["qwen2"], "--output", out, "--quiet", "--config", CONFIG,
                                 *FAST, "--set", "teacher.generation.num_samples=3", "--set", "arc.max_training_steps=20"],
                                capsys)
    assert code == 0, err
    (entry,) = json.loads((out / "report.json").read_text())["per_task"]
    assert entry["recipe_source"] == "teacher" and entry["sample"] == 2 and entry["valid_samples"] == 1
    assert entry["recipe"]["epochs"] == 2 and entry["training"]["steps"] == 2  # 2 leave-one-out tasks, batch 2
    assert "over budget" in entry["invalid_reasons"][1] and "invalid recipe" in entry["invalid_reasons"][0]
    edits = [json.loads(line) for line in (out / "self_edits.jsonl").read_text().splitlines()]
    # the junk draft was redrawn once (arc.resamples=1) and stayed junk; the over-budget one was not redrawn
    assert [e["attempts"] for e in edits] == [2, 1, 1] and [e["valid"] for e in edits] == [False, False, True]


def _bad_inputs(tmp_path, two_tasks):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"abc": {"train": [')
    raw = json.loads(Path(two_tasks).read_text())
    bad_cell = tmp_path / "bad_cell.json"
    raw_bad = json.loads(json.dumps(raw))
    raw_bad[TWO_TASKS[0]]["train"][1]["output"][2][0] = 12
    bad_cell.write_text(json.dumps(raw_bad))
    no_solution = tmp_path / "solutions.json"
    no_solution.write_text(json.dumps({TWO_TASKS[0]: [[[1]]]}))
    return {
        "no tasks given": ([], "--arc-tasks"),
        "missing file": (["--arc-tasks", tmp_path / "nope.json"], "nope.json"),
        "malformed JSON": (["--arc-tasks", bad_json], "bad.json"),
        "colour out of range": (["--arc-tasks", bad_cell], "train[1].output row 2 cell 0 is 12"),
        "solution missing": (["--arc-tasks", two_tasks, "--arc-solutions", no_solution], TWO_TASKS[1]),
        "invalid fallback recipe": (["--arc-tasks", two_tasks, "--set", "arc.fallback_recipe='{\"epochs\": 3}'"],
                                    "arc.fallback_recipe"),
        "voting transforms": (["--arc-tasks", two_tasks, "--set", "arc.voting_transforms=0"], "voting_transforms"),
        "documents given": (["--arc-tasks", two_tasks, "--docs", two_tasks], "--task knowledge"),
    }


@pytest.mark.parametrize("case", ["no tasks given", "missing file", "malformed JSON", "colour out of range",
                                  "solution missing", "invalid fallback recipe", "voting transforms",
                                  "documents given"])
def test_bad_arc_input_is_one_line_and_leaves_nothing(case, tiny_models, two_tasks, tmp_path, capsys):
    args, needle = _bad_inputs(tmp_path, two_tasks)[case]
    out = tmp_path / "out"
    code, _, err = run_cli(["adapt-student", "--task", "arc", *args, "--teacher", tiny_models["llama"],
                            "--student", tiny_models["llama"], "--output", out, "--quiet"], capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not out.exists()


def _constant_tasks(tmp_path, colours, name):
    """Tasks whose every output is one colour as a 1x1 grid: a random tiny student learns them in a few steps."""
    challenges, solutions = {}, {}
    for c in colours:
        challenges[f"const{c}"] = {"train": [{"input": [[i, 0], [0, i]], "output": [[c]]} for i in (1, 2, 4)],
                                   "test": [{"input": [[7, 0], [0, 7]]}]}
        solutions[f"const{c}"] = [[[c]]]
    (tmp_path / f"{name}_challenges.json").write_text(json.dumps(challenges))
    (tmp_path / f"{name}_solutions.json").write_text(json.dumps(solutions))
    return tmp_path / f"{name}_challenges.json", tmp_path / f"{name}_solutions.json"


class RecipeTeacher(ScriptedTeacher):
    """Sample 0 is junk, sample 1 a recipe that solves a constant task."""

    def sample(self, prompts, settings, seeds):
        from teacher.backends import Sample

        good = json.loads(FALLBACK) | {"use_basic": False, "learning_rate": 1e-2, "epochs": 5}
        texts = ["no idea", json.dumps(good)][: settings.num_samples]
        return [[Sample(t, 20, True) for t in texts] for _ in prompts]


def test_train_teacher_on_arc_selects_solving_recipes(tiny_models, tmp_path, capsys, monkeypatch):
    import teacher.backends

    monkeypatch.setattr(teacher.backends, "TransformersBackend", RecipeTeacher)
    train_c, train_s = _constant_tasks(tmp_path, (3, 5), "train")
    held_c, held_s = _constant_tasks(tmp_path, (6,), "heldout")
    out = tmp_path / "run"
    code, stdout, err = run_cli([
        "train-teacher", "--task", "arc", "--config", Path(__file__).resolve().parents[1] / "configs/arc_fewshot.yaml",
        "--arc-tasks", train_c, "--arc-solutions", train_s, "--teacher", tiny_models["llama"],
        "--student", tiny_models["qwen2"], "--output", out, "--quiet",
        "--set", f"arc.heldout_challenges={held_c}", "--set", f"arc.heldout_solutions={held_s}",
        "--set", "data.contexts_per_round=2", "--set", "data.heldout_contexts=1",
        "--set", "rest_em.student_follows_teacher=false", "--set", "teacher.generation.num_samples=2",
        "--set", "student.lora.r=8", "--set", "arc.voting_transforms=1", "--set", "m_step.epochs=1",
        "--set", "m_step.max_length=1024"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (out / "round_1/e_step.jsonl").read_text().splitlines()]
    assert [(r["sample"], r["valid"], r["scores"]) for r in records] == [(0, False, []), (1, True, [1.0])] * 2
    selected = [json.loads(line) for line in (out / "round_1/selected.jsonl").read_text().splitlines()]
    assert sorted(s["context"] for s in selected) == ["const3", "const5"] and all(s["reward"] == 1.0 for s in selected)
    assert json.loads((out / "round_1/m_step.json").read_text())["pairs"] == 2
