"""The same self-edits give the same adapter however they arrived: uninterrupted, killed mid-training and resumed
from the training checkpoint, or handed in with --edits (no teacher in the process). Bitwise, at one thread."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _args(tiny_models, docs, out, *extra):
    return ["adapt-student", "--docs", str(docs), "--student", str(tiny_models["llama"]), "--output", str(out),
            "--set", "teacher.generation.num_samples=3", "--set", "teacher.generation.max_new_tokens=40",
            "--set", "student.train.epochs=60", "--set", "student.train.batch_size=1",
            "--set", "student.train.checkpoint_steps=20", "--set", "student.eval.max_new_tokens=4",
            "--set", "student.lora.r=4", *extra]


def _adapter(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.fixture
def docs(squad_file, tmp_path):
    data = json.loads(squad_file.read_text())[:4]
    path = tmp_path / "docs.json"
    path.write_text(json.dumps([{"id": f"d{i}", "title": d["title"], "text": d["context"]} for i, d in enumerate(data)]))
    return path


def test_uninterrupted_killed_and_resumed_and_given_edits_give_one_adapter(tiny_models, docs, tmp_path, capsys):
    import torch

    from pipeline.cli import main

    teacher = ["--teacher", str(tiny_models["qwen2"])]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    with pytest.raises(SystemExit):
        main(_args(tiny_models, docs, a, *teacher, "--quiet"))

    # B: killed with SIGKILL once its training has checkpointed, then the same command again.
    # Bitwise equality holds at one thread count: the child gets this process's.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *_args(tiny_models, docs, b, *teacher, "--quiet")],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = b / ".work" / "train_checkpoint" / "state.json"
    deadline = time.monotonic() + 240
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists() and not (b / "adapter").exists(), "the kill came outside the training phase"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(_args(tiny_models, docs, b, *teacher))
    resumed = capsys.readouterr().err
    assert "resumed training from its checkpoint at step" in resumed, resumed[-2000:]

    # C: a's self-edits handed in; no teacher is named or loaded.
    with pytest.raises(SystemExit):
        main(_args(tiny_models, docs, c, "--edits", str(a / "self_edits.jsonl"), "--set", "edits.count=null",
                   "--quiet"))

    ta, tb, tc = _adapter(a), _adapter(b), _adapter(c)
    assert ta.keys() == tb.keys() == tc.keys() and ta
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
        assert torch.equal(ta[k], tc[k]), k
    reports = [json.loads((r / "report.json").read_text()) for r in (a, b, c)]
    assert reports[0]["after"] == reports[1]["after"] == reports[2]["after"]
    assert reports[2]["teacher"] is None and reports[0]["training"][0]["steps"] >= 60
    # Each run folder says what produced it; the claim above is between runs whose provenance agrees.
    provs = [json.loads((r / "provenance.json").read_text()) for r in (a, b, c)]
    assert len(provs[1]["resumed"]) == 1
    for p in provs:
        created = p["created"]
        assert created["machine"]["torch_threads"] == provs[0]["created"]["machine"]["torch_threads"]
        assert created["libraries"]["torch"] and created["models"]["student"]["sha256"]
        assert set(created["seal_tt"]) >= {"version", "commit", "dirty"}
