"""benchmarks/raw_records.py: a run's records saved into the repo and restored into a run folder, never overwriting
lines it did not write."""

import gzip
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from raw_records import restore, save, save_run  # noqa: E402


def _run(path: Path, files: dict[str, str]) -> Path:
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    (path / "bench.json").write_text('{"a": 1}')
    return path


def test_a_run_saved_then_restored_elsewhere_resumes_with_whole_lines_only(tmp_path):
    run = _run(tmp_path / "run", {"records.auto-1.jsonl": '{"key": "x"}\n{"key": "y"}\n{"key": "z',
                                  "records.0.jsonl": ""})
    raw = tmp_path / "raw"
    assert save(run, raw, "eval") == {"eval_records.0.jsonl.gz": 0, "eval_records.auto-1.jsonl.gz": 2}
    assert sorted(p.name for p in raw.iterdir()) == ["eval_bench.json", "eval_records.0.jsonl.gz",
                                                     "eval_records.auto-1.jsonl.gz"]
    again = tmp_path / "again"
    assert restore(again, raw, "eval") == {"records.0.jsonl": 0, "records.auto-1.jsonl": 2}
    # the torn line a worker was writing was not saved
    assert (again / "records.auto-1.jsonl").read_text() == '{"key": "x"}\n{"key": "y"}\n'
    assert (again / "bench.json").read_text() == '{"a": 1}'
    assert restore(again, raw, "eval") == {}  # nothing to do the second time
    assert restore(run, raw, "eval") == {}  # the run holds every saved line and more


def test_disagreeing_records_are_refused_not_overwritten(tmp_path):
    run = _run(tmp_path / "run", {"records.0.jsonl": '{"key": "x"}\n'})
    raw = tmp_path / "raw"
    save(run, raw, "eval")
    (run / "records.0.jsonl").write_text('{"key": "other"}\n')
    with pytest.raises(SystemExit, match="not overwritten"):
        save(run, raw, "eval")
    assert gzip.decompress((raw / "eval_records.0.jsonl.gz").read_bytes()) == b'{"key": "x"}\n'
    with pytest.raises(SystemExit, match="not overwritten"):
        restore(run, raw, "eval")
    assert (run / "records.0.jsonl").read_text() == '{"key": "other"}\n'
    (run / "bench.json").write_text('{"a": 2}')
    with pytest.raises(SystemExit, match="other settings"):
        restore(run, raw, "eval")


def test_a_run_folder_is_saved_without_its_weights_and_only_grows(tmp_path):
    run = tmp_path / "run"
    files = {"metrics.jsonl": '{"round": 0}\n', "summary.md": "| round |\n", "config.yaml": "rounds: 1\n",
             "round_1/e_step.jsonl": '{"reward": 0.5}\n', "round_1/m_step.json": "{}",
             "round_1/teacher/adapter_config.json": "{}", "round_1/teacher/adapter_model.safetensors": "weights",
             "round_1/.e_step.jsonl.tmp": "half"}
    for name, text in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    dest = tmp_path / "raw"
    saved = save_run(run, dest)
    assert sorted(saved) == ["config.yaml", "metrics.jsonl", "round_1/e_step.jsonl", "round_1/m_step.json",
                             "summary.md"]
    assert gzip.decompress((dest / "round_1/e_step.jsonl.gz").read_bytes()) == b'{"reward": 0.5}\n'
    assert not (dest / "round_1/teacher").exists()
    (run / "round_1/e_step.jsonl").write_text('{"reward": 0.5}\n{"reward": 1.0}\n')
    assert save_run(run, dest)["round_1/e_step.jsonl"] == 2
    (run / "round_1/e_step.jsonl").write_text('{"reward": 0.0}\n')
    with pytest.raises(SystemExit, match="not overwritten"):
        save_run(run, dest)

    # a folder it did not save this run into is left alone, whatever it holds
    other = tmp_path / "mine"
    other.mkdir()
    (other / "summary.md").write_text("the user's own notes")
    (run / "round_1/e_step.jsonl").write_text('{"reward": 0.5}\n')
    with pytest.raises(SystemExit, match="nothing overwritten"):
        save_run(run, other)
    assert (other / "summary.md").read_text() == "the user's own notes" and len(list(other.iterdir())) == 1


def test_save_refuses_a_file_it_did_not_write_and_another_runs_settings(tmp_path):
    run = _run(tmp_path / "run", {"records.0.jsonl": '{"key": "x"}\n'})
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "eval_records.0.jsonl.gz").write_text("not gzip")
    with pytest.raises(SystemExit, match="not a gzipped records file"):
        save(run, raw, "eval")
    assert (raw / "eval_records.0.jsonl.gz").read_text() == "not gzip"
    (raw / "eval_records.0.jsonl.gz").unlink()
    (raw / "eval_bench.json").write_text('{"a": 2}')
    with pytest.raises(SystemExit, match="other settings"):
        save(run, raw, "eval")
    assert (raw / "eval_bench.json").read_text() == '{"a": 2}'
