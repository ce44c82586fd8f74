"""seal-tt never deletes what it did not write: whole-folder outputs (`merge`, `convert-gguf`) and run folders."""

import json
import os
import shutil

import pytest

from core.errors import UserError
from core.outputs import MARKER
from pipeline.cli import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def llama_adapter(tiny_models, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]))
    get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"])).save_pretrained(
        str(out), safe_serialization=True)
    return out


def _users_folder(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own notes")
    return mine


def test_merge_never_replaces_a_folder_seal_tt_did_not_write(tiny_models, llama_adapter, tmp_path, capsys):
    mine = _users_folder(tmp_path)
    # Refused before the base model is even looked at: a missing base is not what the error names.
    for extra in ([], ["--force"]):
        code, _, err = run_cli(["merge", "--base", tmp_path / "no-such-model", "--adapter", llama_adapter,
                                "--output", mine, *extra], capsys)
        line = _one_error_line(err)
        assert code == 2 and "not written by seal-tt" in line and "even with --force" in line, err
        assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
        assert (mine / "notes.txt").read_text() == "my own notes"


def test_merge_replaces_its_own_output_only_with_force(tiny_models, llama_adapter, tmp_path, capsys):
    out = tmp_path / "merged"
    out.mkdir()  # an empty folder is written into
    args = ["merge", "--base", tiny_models["llama"], "--adapter", llama_adapter, "--output", out]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    marker = json.loads((out / MARKER).read_text())
    assert marker["written_by"] == "seal-tt" and (out / "model.safetensors").exists()

    (out / "stale.txt").write_text("left from before")
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "--force" in _one_error_line(err) and (out / "stale.txt").exists()
    code, _, err = run_cli([*args, "--force"], capsys)
    assert code == 0, err
    assert (out / "model.safetensors").exists() and (out / MARKER).exists() and not (out / "stale.txt").exists()
    assert not list(tmp_path.glob(".merged.*")), "no temporary folder is left beside the output"


def test_convert_gguf_never_replaces_a_folder_seal_tt_did_not_write(tmp_path, capsys):
    mine = _users_folder(tmp_path)
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"not a gguf file")
    for extra in ([], ["--force"]):
        code, _, err = run_cli(["convert-gguf", not_gguf, mine, *extra], capsys)
        assert code == 2 and "not written by seal-tt" in _one_error_line(err)
        assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]

    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / MARKER).write_text("{}")
    (ours / "config.json").write_text("{}")
    code, _, err = run_cli(["convert-gguf", not_gguf, ours], capsys)
    assert code == 2 and "--force" in _one_error_line(err)
    # Forced, the folder passes; the bad file is then what is named, and the old output is still whole.
    code, _, err = run_cli(["convert-gguf", not_gguf, ours, "--force"], capsys)
    assert code == 2 and "model.gguf" in _one_error_line(err) and (ours / "config.json").exists()


def test_atomic_dir_swaps_internal_folders_and_refuses_a_users(tmp_path):
    from core.rundir import atomic_dir

    mine = _users_folder(tmp_path)
    with pytest.raises(UserError, match="not written by seal-tt"):
        with atomic_dir(mine) as tmp:
            (tmp / "x").write_text("new")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["mine"], "the temporary folder is removed"

    ckpt = tmp_path / "run" / ".work" / "checkpoint"  # seal-tt's own, written before markers existed
    ckpt.mkdir(parents=True)
    (ckpt / "state").write_text("old")
    with atomic_dir(ckpt, internal=True) as tmp:
        (tmp / "state").write_text("new")
    assert [p.name for p in ckpt.iterdir()] == ["state"] and (ckpt / "state").read_text() == "new"


def test_a_run_folder_is_removed_on_a_user_error_only_while_nothing_is_finished(tmp_path):
    from core.rundir import holds_finished_work, removed_on_user_error

    run = tmp_path / "run"
    with pytest.raises(UserError) as err:
        with removed_on_user_error(run):
            (run / ".work").mkdir(parents=True)
            (run / "config.yaml").write_text("x: 1\n")
            (run / "provenance.json").write_text("{}")
            assert not holds_finished_work(run)
            raise UserError("bad setting")
    assert str(err.value) == "bad setting" and not run.exists()

    with pytest.raises(UserError) as err:
        with removed_on_user_error(run):
            run.mkdir()
            (run / "config.yaml").write_text("x: 1\n")
            (run / "self_edits.jsonl").write_text('{"document": "a"}\n')
            raise UserError("late error")
    assert (run / "self_edits.jsonl").exists()
    assert str(err.value).startswith("late error; the finished work in") and "same --output" in str(err.value)


def _weightless(model_dir, dest):
    """A copy of a model folder without its weights: any attempt to load (run) the model fails."""
    shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    return dest


def test_a_lora_target_that_matches_no_module_is_refused_before_any_model_runs(tiny_models, tmp_path, capsys):
    # Weightless models: had anything loaded one, the error would be that it cannot be loaded.
    teacher = _weightless(tiny_models["llama"], tmp_path / "teacher")
    student = _weightless(tiny_models["qwen2"], tmp_path / "student")
    doc = tmp_path / "d.txt"
    doc.write_text("Velmora is a river town with a stone bridge.")
    out = tmp_path / "out"
    code, _, err = run_cli(["adapt-student", "--docs", doc, "--teacher", teacher, "--student", student, "--output",
                            out, "--quiet", "--set", "student.lora.target_modules=[query_key_value]"], capsys)
    line = _one_error_line(err)
    assert code == 2 and "student.lora.target_modules" in line and "q_proj" in line and not out.exists(), err


TEACHER_ARGS = ["--set", "data.contexts_per_round=2", "--set", "data.heldout_contexts=2", "--set", "rounds=1"]


@pytest.mark.parametrize("extra, needle", [
    (["--set", "m_step.lora.target_modules=[query_key_value]"], "m_step.lora.target_modules"),
    (["--set", "student.lora.target_modules=[query_key_value]"], "student.lora.target_modules"),
    (["--set", "m_step.max_length=16"], "m_step.max_length=16"),
])
def test_train_teacher_settings_the_models_must_fit_are_checked_first(tiny_models, squad_file, tmp_path, capsys,
                                                                      extra, needle):
    teacher = _weightless(tiny_models["llama"], tmp_path / "teacher")
    student = _weightless(tiny_models["qwen2"], tmp_path / "student")
    out = tmp_path / "out"
    code, _, err = run_cli(["train-teacher", "--docs", squad_file, "--teacher", teacher, "--student", student,
                            "--output", out, "--quiet", *TEACHER_ARGS, *extra], capsys)
    assert code == 2 and needle in _one_error_line(err) and not out.exists(), err


def test_an_output_that_cannot_be_written_is_said_first(tiny_models, llama_adapter, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for output, needle in ((a_file, "not a folder"), (a_file / "merged", "is a file")):
        code, _, err = run_cli(["merge", "--base", tmp_path / "no-such-model", "--adapter", llama_adapter,
                                "--output", output], capsys)
        assert code == 2 and needle in _one_error_line(err)
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere: a folder without write permission cannot be tried")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run_cli(["merge", "--base", tiny_models["llama"], "--adapter", llama_adapter, "--output",
                                locked / "merged"], capsys)
        assert code == 2 and "cannot be written" in _one_error_line(err)
    finally:
        locked.chmod(0o700)
