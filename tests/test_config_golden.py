"""Golden config dumps: what each command writes into its run folder as `config.yaml` stays the same.

A run folder is resumed by comparing its `config.yaml` with the config of the rerun; a refactor that moves a
settings class, renames a field or reorders fields would change what a command writes, and an older run folder might
then be refused (or need `--force`, which discards checkpoints). The golden files in `tests/golden/` were written by
commit 2219995 (before the workflow refactor); every command's resolved config, on its defaults and on each shipped
config, must still dump to the same text. `tests/fixtures/run_v1/` holds run folders as that version wrote them (their
scaffolding only: no records, no weights); they must resume without `--force`.

To change a dump on purpose (a new setting, a renamed key with a migration on read), rewrite the goldens with
`SEAL_TT_UPDATE_GOLDEN=1 pytest tests/test_config_golden.py` and say why in the commit.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "run_v1"
UPDATE = os.environ.get("SEAL_TT_UPDATE_GOLDEN") == "1"

# golden name -> (command, shipped config or None for the defaults)
CASES = {
    "adapt-student": ("adapt-student", None),
    "adapt-student_adapt_knowledge": ("adapt-student", "configs/adapt_knowledge.yaml"),
    "adapt-student_quickstart_cpu": ("adapt-student", "configs/quickstart_cpu.yaml"),
    "adapt-student_adapt_arc": ("adapt-student", "configs/adapt_arc.yaml"),
    "train-teacher": ("train-teacher", None),
    "train-teacher_knowledge_squad": ("train-teacher", "configs/knowledge_squad.yaml"),
    "train-teacher_knowledge_smollm2_cpu": ("train-teacher", "configs/knowledge_smollm2_cpu.yaml"),
    "train-teacher_arc_fewshot": ("train-teacher", "configs/arc_fewshot.yaml"),
    "update": ("update", None),
    "update_store_quickstart_cpu": ("update", "configs/store_quickstart_cpu.yaml"),
}


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"no golden file {path} (write it with SEAL_TT_UPDATE_GOLDEN=1)"
    golden = path.read_text(encoding="utf-8")
    if text != golden:
        import difflib

        diff = "".join(difflib.unified_diff(golden.splitlines(True), text.splitlines(True), f"golden/{name}", "now"))
        pytest.fail(f"the resolved config dump changed; a run folder written before would see another config:\n{diff}")


def _resolve(command: str, config: str | None):
    """The command's config as its CLI builds it (defaults <- YAML file <- no flags)."""
    from core.config import load_config
    from pipeline.commands import CONFIGS

    return load_config(CONFIGS[command], REPO / config if config else None, {})


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_resolved_config_a_run_folder_holds_is_unchanged(name, tmp_path):
    from core.rundir import CONFIG_NAME, RunDir

    command, config = CASES[name]
    cfg = _resolve(command, config)
    RunDir(tmp_path / "run").start(cfg)  # what every command writes into its run folder
    _check(f"config_{name}.yaml", (tmp_path / "run" / CONFIG_NAME).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["adapt-student", "train-teacher_arc_fewshot", "update_store_quickstart_cpu"])
def test_seal_tt_config_prints_the_same_dump(name):
    from typer.testing import CliRunner

    from pipeline.cli import app

    command, config = CASES[name]
    result = CliRunner().invoke(app, ["config", command, *(["--config", str(REPO / config)] if config else [])])
    assert result.exit_code == 0, result.output
    assert result.stdout == (GOLDEN / f"config_{name}.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["update", "update_store_quickstart_cpu"])
def test_the_settings_a_store_keeps_are_unchanged(name):
    """`store.json`'s settings: what a store fixes at creation and compares every later update with."""
    from pipeline.store.update import fixed_settings

    command, config = CASES[name]
    settings = fixed_settings(_resolve(command, config))
    _check(f"store_settings_{name}.json", json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


def _demo_world():
    """A stand-in for the demo's world models: fixed paths, the world's own prompts."""
    from pipeline.world import QA_PROMPT, TEACHER_PROMPT

    return SimpleNamespace(student="world/student", teacher="world/teacher",
                           data={"rl": "world/data/rl.json", "heldout": "world/data/heldout.json"},
                           qa_prompt=QA_PROMPT, teacher_prompt=TEACHER_PROMPT)


def test_the_demo_config_is_unchanged(tmp_path):
    """`seal-tt demo` runs train-teacher on the world with its own settings, into runs/demo/seed_N."""
    from core.rundir import CONFIG_NAME, RunDir
    from pipeline.demo import demo_config

    cfg = demo_config(_demo_world(), "runs/demo/seed_0")
    RunDir(tmp_path / "run").start(cfg)
    _check("config_demo.yaml", (tmp_path / "run" / CONFIG_NAME).read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------ run folders of the earlier version
def _adapt_student(output: Path):
    # seal-tt adapt-student --docs docs.txt --teacher teacher --student student --output OUTPUT
    from core.config import load_config
    from pipeline.commands import CONFIGS

    return load_config(CONFIGS["adapt-student"], None, {
        "docs": ["docs.txt"], "teacher": {"model": {"path": "teacher"}}, "student": {"model": {"path": "student"}},
        "output": str(output)})


def _train_teacher(output: Path):
    # seal-tt train-teacher --config configs/knowledge_squad.yaml --teacher teacher --student student --output OUTPUT
    from core.config import load_config
    from pipeline.commands import CONFIGS

    return load_config(CONFIGS["train-teacher"], REPO / "configs/knowledge_squad.yaml", {
        "teacher": {"model": {"path": "teacher"}}, "student": {"model": {"path": "student"}}, "output": str(output)})


def _demo(output: Path):
    from pipeline.demo import demo_config

    return demo_config(_demo_world(), output)


RESUMES = {"adapt-student": _adapt_student, "train-teacher": _train_teacher, "demo": _demo}


@pytest.mark.parametrize("command", sorted(RESUMES))
def test_a_run_folder_of_the_earlier_version_resumes_without_force(command, tmp_path):
    from core.rundir import CONFIG_NAME, RunDir

    run = tmp_path / command
    fixture = FIXTURES / command
    if UPDATE:
        shutil.rmtree(fixture, ignore_errors=True)
        RunDir(fixture).start(RESUMES[command](f"runs/{command}"))
    shutil.copytree(fixture, run)
    before = (run / CONFIG_NAME).read_text(encoding="utf-8")
    # The folder was made at runs/<command>: where a run folder lives is not one of its settings.
    assert RunDir(run).start(RESUMES[command](run), force=False) is True
    assert (run / CONFIG_NAME).read_text(encoding="utf-8").replace(str(run), f"runs/{command}") == before


def test_a_store_of_the_earlier_version_accepts_an_update_without_new_settings():
    """An update names only the store, the folder and the teacher: the store's own settings fill in the rest."""
    from core.config import load_config
    from pipeline.commands import CONFIGS
    from pipeline.store.layout import Store
    from pipeline.store.update import _check_fixed, with_store_settings

    store = Store(FIXTURES / "store")
    if UPDATE:
        shutil.rmtree(store.path, ignore_errors=True)
        from pipeline.store.update import fixed_settings

        made = load_config(CONFIGS["update"], REPO / "configs/store_quickstart_cpu.yaml", {})
        store.create(fixed_settings(made))
    manifest = store.manifest()
    config = with_store_settings(load_config(CONFIGS["update"], None, {
        "store": str(store.path), "docs": ["docs"], "teacher": {"model": {"path": "teacher"}}}), manifest["settings"])
    _check_fixed(store, manifest, config)  # raises a UserError when the store would refuse the update
    assert config.strategy == "replay" and config.student.lora.r == 16


@pytest.mark.parametrize("command", ["adapt-student", "train-teacher"])
def test_a_run_folder_of_9553463_resumes_without_force(command, tmp_path):
    """tests/fixtures/run_v0 was written by 9553463's own code (before the answer, distillation and executor keys):
    the keys added since sit at their defaults, so the run resumes and its config file gains them."""
    from core.rundir import CONFIG_NAME, RunDir

    run = tmp_path / command
    shutil.copytree(FIXTURES.parent / "run_v0" / command, run)
    old = (run / CONFIG_NAME).read_text(encoding="utf-8")
    assert "answer_until" not in old and "ping_timeout_s" not in old
    assert RunDir(run).start(RESUMES[command](run), force=False) is True
    new = (run / CONFIG_NAME).read_text(encoding="utf-8")
    assert "answer_until: auto" in new and "ping_timeout_s: 60.0" in new


def test_a_run_folder_made_on_the_old_metric_default_keeps_it(tmp_path):
    """student.eval.metric's default became auto (benchmarks/grader_check): a run folder made when it was token_f1
    resumes with token_f1, the grader its records were made with; a new run records auto."""
    from core.errors import UserError
    from core.rundir import RunDir

    fresh = _adapt_student(tmp_path / "new")
    RunDir(tmp_path / "new").start(fresh)
    assert fresh.student.eval.metric == "auto"
    run = tmp_path / "old"
    shutil.copytree(FIXTURES / "adapt-student", run)
    config = _adapt_student(run)
    assert config.student.eval.metric == "auto"
    assert RunDir(run).start(config, force=False) is True
    assert config.student.eval.metric == "token_f1"  # what the run goes on grading with
    other = _adapt_student(run)
    other.student.eval.metric = "contains"  # a metric asked for is another config, as before
    with pytest.raises(UserError, match="student.eval.metric"):
        RunDir(run).start(other, force=False)
