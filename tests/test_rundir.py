"""Run-folder JSONL files after a kill: what a resume keeps, and that appends continue on a clean line."""

import json

import pytest

from core.rundir import append_jsonl, complete_groups, read_jsonl


def _write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_complete_groups_drops_a_group_cut_short_and_rewrites_the_file(tmp_path):
    path = tmp_path / "samples.jsonl"
    _write(path, [{"context": "a", "sample": 0}, {"context": "a", "sample": 1}, {"context": "b", "sample": 0}])
    assert complete_groups(path, "context", 2) == {"a": [{"context": "a", "sample": 0}, {"context": "a", "sample": 1}]}
    assert [r["context"] for r in read_jsonl(path)] == ["a", "a"]  # b is drawn again whole on resume


def test_complete_groups_removes_a_torn_last_line_even_when_every_group_is_whole(tmp_path):
    path = tmp_path / "samples.jsonl"
    _write(path, [{"context": "a", "sample": 0}], tail='{"context": "b", "sam')  # killed mid-write of b's first line
    assert list(complete_groups(path, "context", 1)) == ["a"]
    append_jsonl(path, {"context": "b", "sample": 0})
    assert [r["context"] for r in read_jsonl(path)] == ["a", "b"]


def test_complete_groups_of_a_missing_file_is_empty_and_writes_nothing(tmp_path):
    assert complete_groups(tmp_path / "none.jsonl", "context", 3) == {}
    assert not (tmp_path / "none.jsonl").exists()


def test_a_run_made_before_a_setting_existed_resumes_while_the_setting_is_at_its_default(tmp_path):
    import yaml

    from core.config import dump_yaml, load_config
    from pipeline.settings import AdaptConfig
    from core.errors import UserError
    from core.rundir import CONFIG_NAME, RunDir

    run = tmp_path / "run"
    run.mkdir()
    old = yaml.safe_load(dump_yaml(AdaptConfig(output=str(run))))
    del old["student"]["eval"]["answer_until"]  # as written by a version without the setting
    (run / CONFIG_NAME).write_text(yaml.safe_dump(old))
    assert RunDir(run).start(AdaptConfig(output=str(run))) is True
    (run / CONFIG_NAME).write_text(yaml.safe_dump(old))
    changed = load_config(AdaptConfig, overrides=[f"output={run}", "student.eval.answer_until=line"])
    with pytest.raises(UserError, match="answer_until"):
        RunDir(run).start(changed)
