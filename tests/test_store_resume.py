"""A store's pending update is continued per document (issue 22): killed during training and rerun with one more
file in the folder, it keeps the other documents' self-edits (the teacher is not asked for them again) and adds the
new one; rerun with another teacher or another edits file, it writes again only what that changes; `update.json`
and `status` say, per document, which teacher (its content hash) or edits file wrote its self-edits."""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.test_store import FAST, load_state, run_cli, write_docs

REPO = Path(__file__).resolve().parents[1]
# A teacher writing two samples per document and a training run long enough to be killed inside.
SLOW = ["--set", "teacher.generation.num_samples=2", "--set", "teacher.generation.max_new_tokens=48",
        "--set", "student.train.epochs=60", "--set", "student.train.checkpoint_steps=5",
        "--set", "student.eval.max_new_tokens=6"]


def teacher_args(store, docs, q, teacher, student, settings):
    return ["update", "--store", store, "--docs", docs, "--questions", q, "--teacher", teacher,
            "--student", student, *settings]


@pytest.fixture
def teacher_prompts(monkeypatch):
    """Every prompt the teacher is asked to write for, in this process."""
    import pipeline.sampling as sampling

    real, asked = sampling.teacher_backend, []

    class Counting:
        def __init__(self, backend):
            self.backend = backend

        def sample(self, prompts, *args, **kwargs):
            asked.extend(prompts)
            return self.backend.sample(prompts, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.backend, name)

    @contextmanager
    def counting(*args, **kwargs):
        with real(*args, **kwargs) as (backend, adapter_off):
            yield Counting(backend), adapter_off

    monkeypatch.setattr(sampling, "teacher_backend", counting)
    return asked


def _mark(pending_edits: Path) -> list[dict]:
    """Tag every pending self-edit, so that one the teacher wrote again is told from one that was kept."""
    records = [json.loads(x) for x in pending_edits.read_text().splitlines()]
    for r in records:
        r["self_edit"] = "KEPT " + r["self_edit"]
    pending_edits.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def _crash_in_training(monkeypatch, args, capsys):
    """Run an update that dies when training starts (as a kill there would leave it: its self-edits written)."""
    from pipeline.cli import main
    from student.engine import StudentEngine

    def crash(*a, **k):
        raise RuntimeError("crashed in training")

    with monkeypatch.context() as m:
        m.setattr(StudentEngine, "train_texts", crash)
        with pytest.raises(RuntimeError, match="crashed in training"):
            main([str(a) for a in args])
    capsys.readouterr()
    assert (Path(args[2]) / ".pending/job.json").is_file() and not (Path(args[2]) / "state.json").exists()


def test_killed_in_training_then_one_file_added_keeps_the_others_self_edits(tiny_models, tmp_path, capsys,
                                                                           teacher_prompts):
    from core.provenance import model_identity

    store, llama = tmp_path / "store", tiny_models["llama"]
    docs, q, _ = write_docs(tmp_path / "docs", ["velmora", "orrin"])
    args = teacher_args(store, docs, q, llama, llama, SLOW)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *map(str, args), "--quiet"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)
    ckpt = store / ".pending" / "train_checkpoint"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (ckpt.exists() and any(ckpt.iterdir())) and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (store / "state.json").exists(), "the update finished before it could be killed"
    job = json.loads((store / ".pending/job.json").read_text())
    assert len(job["documents"]) == 2 and len(set(map(json.dumps, job["self_edits_by"].values()))) == 1
    kept = _mark(store / ".pending/edits.jsonl")
    assert sorted({r["document"] for r in kept}) == ["orrin", "velmora"] and len(kept) == 4

    code, _, err = run_cli(["status", "--store", store], capsys)
    assert code == 0 and "pending update 1: 2 documents, self-edits by teacher" in err + _

    docs, q, _ = write_docs(tmp_path / "docs", ["velmora", "orrin", "kaldor"])  # a file added
    code, out, err = run_cli(teacher_args(store, docs, q, llama, llama, SLOW), capsys)
    assert code == 0, err
    assert "resuming update 1: self-edits of 2 of 3 documents kept, 1 documents added to it" in err
    assert len(teacher_prompts) == 1 and "Ivo Brant" in teacher_prompts[0]  # kaldor's only
    (entry,) = load_state(store)["updates"]
    assert sorted(entry["new"]) == ["kaldor", "orrin", "velmora"] and len(entry["documents"]) == 3
    committed = [json.loads(x) for x in (store / "updates/0001/edits.jsonl").read_text().splitlines()]
    assert committed[:4] == kept and [r["document"] for r in committed[4:]] == ["kaldor", "kaldor"]
    writer = {"teacher": str(llama), "sha256": model_identity(str(llama))["sha256"]}
    assert set(entry["self_edits_by"]) == set(entry["documents"])
    assert all({k: w[k] for k in writer} == writer for w in entry["self_edits_by"].values())
    assert json.loads((store / "updates/0001/update.json").read_text())["self_edits_by"] == entry["self_edits_by"]
    code, out, _ = run_cli(["status", "--store", store], capsys)
    assert code == 0 and f"teacher {llama} (sha256 {writer['sha256'][:12]})" in out
    code, out, _ = run_cli(["status", "--store", store, "--json"], capsys)
    assert all(d["self_edits_by"]["sha256"] == writer["sha256"] for d in json.loads(out)["documents"])


def test_another_teacher_or_edits_file_writes_again_what_it_changes_and_is_recorded(tiny_models, tmp_path,
                                                                                    capsys, monkeypatch,
                                                                                    teacher_prompts):
    from core.hashing import file_sha256
    from core.provenance import model_identity

    llama, qwen = tiny_models["llama"], tiny_models["qwen2"]
    quick = ["--set", "teacher.generation.num_samples=1", "--set", "teacher.generation.max_new_tokens=24", *FAST]
    store = tmp_path / "store"
    docs, q, _ = write_docs(tmp_path / "docs", ["velmora", "orrin"])
    _crash_in_training(monkeypatch, teacher_args(store, docs, q, qwen, llama, quick), capsys)
    assert len(teacher_prompts) == 2
    _mark(store / ".pending/edits.jsonl")
    teacher_prompts.clear()
    code, _, err = run_cli(teacher_args(store, docs, q, llama, llama, quick), capsys)  # another teacher
    assert code == 0, err
    assert "self-edits of 0 of 2 documents kept" in err and f"written again by teacher {llama}" in err
    assert len(teacher_prompts) == 2  # both written again, by the new teacher
    records = [json.loads(x) for x in (store / "updates/0001/edits.jsonl").read_text().splitlines()]
    assert len(records) == 2 and not any(r["self_edit"].startswith("KEPT") for r in records)
    (entry,) = load_state(store)["updates"]
    assert {w["teacher"] for w in entry["self_edits_by"].values()} == {str(llama)}
    assert {w["sha256"] for w in entry["self_edits_by"].values()} == {model_identity(str(llama))["sha256"]}
    assert model_identity(str(llama))["sha256"] != model_identity(str(qwen))["sha256"]

    # Given self-edits: an edited file writes them again, and says so; no teacher is loaded.
    teacher_prompts.clear()
    store = tmp_path / "given"
    docs, q, e = write_docs(tmp_path / "docs2", ["velmora", "kaldor"])
    given = ["update", "--store", store, "--docs", docs, "--questions", q, "--edits", e, "--student", llama, *FAST]
    _crash_in_training(monkeypatch, given, capsys)
    first = file_sha256(e)
    e.write_text(e.read_text().replace("Ivo Brant", "Ivo Brant, an engineer,"))
    code, _, err = run_cli(given, capsys)
    assert code == 0, err
    assert "self-edits of 0 of 2 documents kept" in err and "written again by edits" in err
    (entry,) = load_state(store)["updates"]
    assert {w["sha256"] for w in entry["self_edits_by"].values()} == {file_sha256(e)} != {first}
    assert {w["edits"] for w in entry["self_edits_by"].values()} == {str(e)}
    assert "an engineer" in (store / "updates/0001/edits.jsonl").read_text()
    assert not teacher_prompts
