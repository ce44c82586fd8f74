"""One writer per run folder: a second adapt-student, train-teacher, ARC adapt or demo on a folder another process
writes exits 2 naming it (pid, start time); `--wait` waits its turn; a lock left by a killed process is taken over.

Real processes throughout: a holder that takes the folder's lock and sleeps, and a real adapt-student run (tiny
random student, given self-edits) killed with SIGKILL while it trains.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_adapt_executor import DOCS, data  # noqa: F401  (data: the documents and given self-edits, a fixture)
from tests.test_cli_adapt import run_cli

REPO = Path(__file__).resolve().parents[1]
FAST = ["--set", "student.train.epochs=1", "--set", "student.eval.max_new_tokens=4", "--set", "student.lora.r=4",
        "--set", "student.lora.alpha=8", "--set", "student.eval.use_chat_template=never"]


def _adapt_args(tiny_models, data, out, *extra):
    docs, edits = data
    return ["adapt-student", "--docs", docs, "--edits", edits, "--student", tiny_models["llama"], "--output", out,
            "--quiet", *FAST, *extra]


def _hold(folder: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the run folder's lock for `seconds` (it says "held" once it does)."""
    proc = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom pipeline.runfolder import run_lock\n"
        "with run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(float(sys.argv[2]))"),
        str(folder), str(seconds)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _refused(code: int, err: str, pid: int, folder: Path) -> None:
    assert code == 2, err
    assert err.startswith("error:") and err.count("\n") == 1, err
    assert f"pid {pid} since " in err and str(folder) in err and "--wait" in err, err
    assert re.search(r"since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", err), err


def test_a_second_adapt_student_on_a_held_folder_exits_2_naming_the_holder_and_wait_waits(
        tiny_models, data, tmp_path, capsys):
    out = tmp_path / "run"
    holder = _hold(out, 4)
    code, _, err = run_cli(_adapt_args(tiny_models, data, out), capsys)
    _refused(code, err, holder.pid, out)
    assert out.is_dir() and not (out / "config.yaml").exists()  # the holder's folder, untouched
    start = time.monotonic()
    code, _, err = run_cli(_adapt_args(tiny_models, data, out, "--wait"), capsys)
    assert code == 0, err
    assert time.monotonic() - start > 1.0 and (out / "report.json").exists()
    assert holder.wait(timeout=30) == 0
    assert (out / ".lock").read_text() == ""  # released: it names no holder any more


def test_train_teacher_arc_and_demo_refuse_a_held_folder(tiny_models, squad_file, tmp_path, capsys, monkeypatch):
    from tests.test_cli_arc import CHALLENGES, TWO_TASKS

    out = tmp_path / "run"
    holder = _hold(out, 60)
    try:
        code, _, err = run_cli(["train-teacher", "--docs", squad_file, "--teacher", tiny_models["llama"],
                                "--student", tiny_models["llama"], "--rounds", 1, "--output", out, "--quiet",
                                "--set", "data.contexts_per_round=2", "--set", "data.heldout_contexts=2"], capsys)
        _refused(code, err, holder.pid, out)
        if CHALLENGES.exists():
            tasks = tmp_path / "two_tasks.json"
            raw = json.loads(CHALLENGES.read_text())
            tasks.write_text(json.dumps({k: raw[k] for k in TWO_TASKS}))
            code, _, err = run_cli(["adapt-student", "--task", "arc", "--arc-tasks", tasks, "--teacher",
                                    tiny_models["llama"], "--student", tiny_models["llama"], "--output", out,
                                    "--quiet"], capsys)
            _refused(code, err, holder.pid, out)
        monkeypatch.setenv("SEAL_TT_CACHE", str(tmp_path / "cache"))
        code, _, err = run_cli(["demo", "--quick", "--output", out, "--quiet"], capsys)
        _refused(code, err, holder.pid, out)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written beside the holder
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_running_adapt_student_holds_its_folder_and_its_lock_dies_with_it(tiny_models, data, tmp_path, capsys):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(a) for a in _adapt_args(tiny_models, data, out, "--set", "student.train.epochs=60")]
    first = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out / "self_edits.jsonl").exists():
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.2)
        assert (out / "self_edits.jsonl").exists(), "the first run never started its work"
        code, _, err = run_cli(_adapt_args(tiny_models, data, out, "--set", "student.train.epochs=60"), capsys)
        _refused(code, err, first.pid, out)
        assert first.poll() is None, "the first run must still be running"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    # The dead run's lock file still names it; the lock itself died with it.
    assert f"pid {first.pid} since " in (out / ".lock").read_text()
    code, _, err = run_cli(_adapt_args(tiny_models, data, out, "--set", "student.train.epochs=60"), capsys)
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["documents"] == len(DOCS)


def test_ctrl_c_exits_130_and_says_how_to_resume(tiny_models, data, tmp_path):
    """A real seal-tt process interrupted with SIGINT while it waits for a held folder (typer hands Ctrl-C back as a
    returned 130, which the CLI once turned into exit 0)."""
    out = tmp_path / "run"
    holder = _hold(out, 120)
    try:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli",
                                 *map(str, _adapt_args(tiny_models, data, out, "--wait"))],
                                cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
                                # A shell's background job (CI, nohup) hands its children SIGINT ignored; a user's
                                # terminal does not: give the child the default, as a terminal would.
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        first = proc.stderr.readline()  # said once the run waits for the holder, however long the imports took
        assert first.startswith("waiting: ") and f"pid {holder.pid} since " in first, first
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, first + err
        assert "interrupted: rerun the same command" in err
    finally:
        holder.kill()
        holder.wait()
