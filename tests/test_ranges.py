"""Out-of-range settings are named as such, before any model loads."""

from __future__ import annotations

import pytest

from core.config import check_ranges, load_config
from core.errors import UserError
from pipeline.settings import AdaptConfig, TrainTeacherConfig


@pytest.mark.parametrize("cls, override, key", [
    (AdaptConfig, "student.lora.r=-3", "student.lora.r"),
    (AdaptConfig, "student.lora.dropout=1.5", "student.lora.dropout"),
    (AdaptConfig, "student.train.epochs=0", "student.train.epochs"),
    (AdaptConfig, "student.train.learning_rate=0", "student.train.learning_rate"),
    (TrainTeacherConfig, "m_step.lora.r=0", "m_step.lora.r"),
    (TrainTeacherConfig, "student.train.batch_size=0", "student.train.batch_size"),
    (TrainTeacherConfig, "rest_em.min_contexts_with_winner=0", "rest_em.min_contexts_with_winner"),
])
def test_a_setting_out_of_range_names_its_key(cls, override, key):
    with pytest.raises(UserError, match=f"'{key}'.*out of range"):
        check_ranges(load_config(cls, None, [override]))


def test_the_defaults_and_shipped_configs_are_in_range():
    from pathlib import Path

    check_ranges(AdaptConfig())
    check_ranges(TrainTeacherConfig())
    from tests.test_config import CONFIGS, SHIPPED  # each shipped config with the command it is for

    for path in sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml")):
        check_ranges(load_config(CONFIGS[SHIPPED[path.name]], path))


def test_the_cli_reports_it_in_one_line(tiny_models, tmp_path, capsys):
    from pipeline.cli import main

    doc = tmp_path / "d.txt"
    doc.write_text("A short document.")
    with pytest.raises(SystemExit) as done:
        main(["adapt-student", "--docs", str(doc), "--teacher", str(tiny_models["qwen2"]), "--student",
              str(tiny_models["llama"]), "--set", "student.lora.r=-3", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and "student.lora.r" in err and "target modules" not in err
    assert not (tmp_path / "run").exists()
