"""adapt-student with the student's training sharded by DeepSpeed over two launched processes."""

import json

import pytest

from tests.test_cli_adapt import FAST, run_cli


@pytest.mark.distributed
def test_adapt_student_zero2_two_processes(tiny_models, tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps(d) for d in [
        {"id": "a", "title": "Velmora", "text": "Velmora has a bridge of grey stone built in 1702.",
         "questions": [{"question": "What is the bridge made of?", "answer": "grey stone"}]},
        {"id": "b", "title": "Orrin", "text": "Orrin Lake freezes every December.",
         "questions": [{"question": "When does Orrin Lake freeze?", "answer": "December"}]},
    ]) + "\n")
    out = tmp_path / "run"
    code, _, err = run_cli(["adapt-student", "--docs", docs, "--teacher", tiny_models["llama"], "--student",
                            tiny_models["llama"], "--output", out, "--quiet", "--deepspeed", "zero2", "--nproc", 2,
                            "--merge", *FAST, "--set", "student.train.batch_size=2"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["training"][0]["world_size"] == 2 and report["training"][0]["zero_stage"] == 2
    assert report["after"]["questions"] == 2
    assert (out / "adapter/adapter_model.safetensors").exists() and (out / "merged/model.safetensors").exists()
    assert not (out / ".sharded/adapter").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--deepspeed", "nowhere.json"], "nowhere.json"),
    (["--deepspeed", "zero3", "--per-document"], "mode=joint"),
])
def test_bad_sharded_input(tiny_models, tmp_path, capsys, extra, needle):
    doc = tmp_path / "d.txt"
    doc.write_text("Velmora has a bridge of grey stone.")
    out = tmp_path / "out"
    code, _, err = run_cli(["adapt-student", "--docs", doc, "--teacher", tiny_models["llama"], "--student",
                            tiny_models["llama"], "--output", out, "--quiet", *extra], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
