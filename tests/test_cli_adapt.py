"""`seal-tt adapt-student` end to end on tiny models, and every bad input a user can give it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main

FAST = ["--set", "teacher.generation.num_samples=2", "--set", "teacher.generation.max_new_tokens=32",
        "--set", "student.train.epochs=1", "--set", "student.eval.max_new_tokens=8"]


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_adapt_student_on_three_squad_passages(tiny_models, squad_file, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(["adapt-student", "--docs", squad_file, "--limit", 3, "--teacher", tiny_models["llama"],
                                 "--student", tiny_models["qwen2"], "--output", out, "--quiet", "--merge", *FAST], capsys)
    assert code == 0, err
    assert (out / "merged/model.safetensors").exists() and (out / "merged/tokenizer.json").exists()
    assert "before" in stdout and "after" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["documents"] == 3 and report["self_edits"] == 6
    assert report["before"]["questions"] > 0 and report["after"]["questions"] == report["before"]["questions"]
    edits = [json.loads(line) for line in (out / "self_edits.jsonl").read_text().splitlines()]
    assert len(edits) == 6 and {e["document"] for e in edits} == {d["id"] for d in report["per_document"]}
    assert (out / "config.yaml").exists()

    # the adapter is plain PEFT
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"]), str(out / "adapter"))
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())

    # a rerun reuses the finished run; a changed config is refused
    code, _, err = run_cli(["adapt-student", "--docs", squad_file, "--limit", 3, "--teacher", tiny_models["llama"],
                            "--student", tiny_models["qwen2"], "--output", out, "--merge", *FAST], capsys)
    assert code == 0 and "complete" in err
    code, _, err = run_cli(["adapt-student", "--docs", squad_file, "--limit", 3, "--teacher", tiny_models["llama"],
                            "--student", tiny_models["qwen2"], "--output", out, "--quiet", "--merge", *FAST,
                            "--set", "student.lora.r=4"], capsys)
    assert code == 2 and "another config" in err and "student.lora.r" in err


def test_same_model_as_teacher_and_student_per_document(tiny_models, tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Velmora is a river town with a stone bridge.")
    (docs / "b.md").write_text("Ada Quill was the mayor of Velmora in 1887.")
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"document": "b", "question": "Who was mayor?", "answer": "Ada Quill"}) + "\n")
    out = tmp_path / "run"
    code, _, err = run_cli(["adapt-student", "--docs", docs, "--questions", questions, "--teacher", tiny_models["llama"],
                            "--student", tiny_models["llama"], "--per-document", "--output", out, "--quiet", *FAST],
                           capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "per_document" and report["before"]["questions"] == 1
    assert sorted(p.name for p in (out / "adapters").iterdir()) == ["0000_a", "0001_b"]


def test_resume_after_a_kill_keeps_finished_self_edits(tiny_models, squad_file, tmp_path, capsys):
    """A run killed during the student phase resumes without resampling the teacher's finished documents."""
    out = tmp_path / "run"
    args = ["adapt-student", "--docs", squad_file, "--limit", 2, "--teacher", tiny_models["llama"],
            "--student", tiny_models["qwen2"], "--output", out, "--quiet", *FAST]
    assert run_cli(args, capsys)[0] == 0
    lines = (out / "self_edits.jsonl").read_text().splitlines()
    # simulate a kill in the middle of the second document: a torn line, no report
    (out / "report.json").unlink()
    (out / "self_edits.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    assert run_cli(args, capsys)[0] == 0
    assert (out / "self_edits.jsonl").read_text().splitlines() == lines
    assert json.loads((out / "report.json").read_text())["self_edits"] == 4


@pytest.fixture
def good_doc(tmp_path):
    p = tmp_path / "good.txt"
    p.write_text("Velmora is a river town.")
    return p


def _bad_inputs(tmp_path, good_doc, tiny):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[{"text": "a"},')
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "fine document"}\n{"text": \n')
    not_model = tmp_path / "not_a_model"
    not_model.mkdir()
    base = ["--teacher", tiny, "--student", tiny]
    return {
        "missing path": (["--docs", tmp_path / "nope.txt", *base], "nope.txt"),
        "empty document": (["--docs", empty, *base], "empty.txt"),
        "non-UTF-8 document": (["--docs", latin, *base], "latin.txt"),
        "malformed JSON": (["--docs", bad_json, *base], "bad.json"),
        "malformed JSONL": (["--docs", bad_jsonl, *base], "bad.jsonl"),
        "missing model folder": (["--docs", good_doc, "--teacher", tmp_path / "no_model", "--student", tiny], "no_model"),
        "folder that is no model": (["--docs", good_doc, "--teacher", tiny, "--student", not_model], "config.json"),
        "unknown config key": (["--docs", good_doc, *base, "--set", "student.lora.rnak=4"], "student.lora.rnak"),
        "no training text": (["--docs", good_doc, *base, "--set", "teacher.generation.max_new_tokens=1",
                              "--set", "self_edit.min_chars=50"], "no training text"),
    }


CASES = ["missing path", "empty document", "non-UTF-8 document", "malformed JSON", "malformed JSONL",
         "missing model folder", "folder that is no model", "unknown config key", "no training text"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_leaves_nothing_unfinished(case, tiny_models, tmp_path, good_doc, capsys):
    args, needle = _bad_inputs(tmp_path, good_doc, tiny_models["llama"])[case]
    out = tmp_path / "out"
    code, stdout, err = run_cli(["adapt-student", *args, "--output", out, "--quiet"], capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "Traceback" not in err
    if case == "no training text":  # found after the teacher finished: its self-edits are kept, and it says so
        assert (out / "self_edits.jsonl").exists() and "finished work" in lines[0] and "same --output" in lines[0]
    else:
        assert not out.exists()


def test_a_late_error_keeps_the_finished_self_edits_and_the_rerun_reuses_them(tiny_models, squad_file, tmp_path,
                                                                                capsys):
    """An error after the teacher finished (here: the student's weights cannot be read) keeps self_edits.jsonl;
    the rerun, with the student fixed, samples nothing again: it runs with the teacher's weights gone."""
    import shutil

    teacher, student = tmp_path / "teacher", tmp_path / "student"
    shutil.copytree(tiny_models["llama"], teacher)
    shutil.copytree(tiny_models["qwen2"], student)
    hidden = tmp_path / "student.safetensors"
    (student / "model.safetensors").rename(hidden)
    out = tmp_path / "run"
    args = ["adapt-student", "--docs", squad_file, "--limit", 2, "--teacher", teacher, "--student", student,
            "--output", out, *FAST]
    code, _, err = run_cli(args, capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: cannot load model") and "Traceback" not in err, err
    assert f"the finished work in {out} was kept" in last and "same --output" in last
    edits = (out / "self_edits.jsonl").read_text()
    assert len(edits.splitlines()) == 4

    hidden.rename(student / "model.safetensors")
    (teacher / "model.safetensors").unlink()  # had the rerun loaded the teacher, it would fail
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert "2 of 2 passages reused" in err and "the teacher is not loaded" in err
    assert (out / "self_edits.jsonl").read_text() == edits
    assert json.loads((out / "report.json").read_text())["self_edits"] == 4


def test_console_script_runs_and_reports_errors(tmp_path):
    exe = Path(sys.executable).with_name("seal-tt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([exe, "--help"], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and "adapt-student" in res.stdout
    res = subprocess.run([exe, "adapt-student", "--docs", tmp_path / "missing.txt", "--teacher", "t", "--student", "s"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stderr


def test_pickled_adapters_are_refused(tiny_models, tmp_path, good_doc, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_models["llama"])}))
    (adapter / "adapter_model.bin").write_bytes(b"not loaded")
    code, _, err = run_cli(["adapt-student", "--docs", good_doc, "--teacher", adapter, "--student",
                            tiny_models["llama"], "--output", tmp_path / "o"], capsys)
    assert code == 2 and "adapter_model.safetensors" in err and "pickled" in err
    code, _, err = run_cli(["merge", "--base", tiny_models["llama"], "--adapter", adapter, "--output",
                            tmp_path / "m"], capsys)
    assert code == 2 and "pickled" in err and not (tmp_path / "m").exists()


def test_init_tiny_command(tmp_path, capsys):
    code, stdout, err = run_cli(["init-tiny", tmp_path / "m", "--arch", "qwen2"], capsys)
    assert code == 0, err
    assert (tmp_path / "m/qwen2/config.json").exists() and (tmp_path / "m/qwen2/model.safetensors").exists()
    code, _, err = run_cli(["init-tiny", tmp_path / "m", "--arch", "gpt2"], capsys)
    assert code == 2 and "unknown --arch" in err
