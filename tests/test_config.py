"""Configuration: every shipped YAML loads, and mistakes are refused rather than silently defaulted."""

import json
from pathlib import Path

import pytest

from core.config import dump_yaml, load_config, parse_override
from core.errors import UserError
from pipeline.commands import CONFIGS
from pipeline.settings import AdaptConfig

ROOT = Path(__file__).resolve().parents[1]
# Every shipped YAML must be listed here with the command it configures: a new file without a test fails.
SHIPPED = {
    "adapt_knowledge.yaml": "adapt-student",
    "adapt_arc.yaml": "adapt-student", "arc_fewshot.yaml": "train-teacher",
    "quickstart_cpu.yaml": "adapt-student",
    "knowledge_squad.yaml": "train-teacher", "knowledge_smollm2_cpu.yaml": "train-teacher",
    "store_quickstart_cpu.yaml": "update", "teacher_smollm2_cpu.yaml": "train-teacher",
    "knowledge_smollm2_recipe.yaml": "adapt-student", "store_smollm2_cpu.yaml": "update",
}


def shipped_configs():
    return sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))


def test_every_shipped_config_is_registered():
    assert set(shipped_configs()) == set(SHIPPED), "register new configs in SHIPPED with their command"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_config_loads_and_roundtrips(name, tmp_path):
    cls = CONFIGS[SHIPPED[name]]
    cfg = load_config(cls, ROOT / "configs" / name)
    again = tmp_path / "again.yaml"
    again.write_text(dump_yaml(cfg))
    assert load_config(cls, again) == cfg


def test_the_demo_settings_load_and_are_in_range():
    """`seal-tt demo`'s settings ship as pipeline/data/demo.yaml (package data), validated like configs/."""
    from core.config import check_ranges
    from pipeline.demo import DEMO_YAML

    check_ranges(load_config(CONFIGS["train-teacher"], DEMO_YAML))


def test_paper_inner_loop_settings():
    cfg = load_config(AdaptConfig, ROOT / "configs/adapt_knowledge.yaml")
    lora, train, ev = cfg.student.lora, cfg.student.train, cfg.student.eval
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (32, 64, 0.0, ["q_proj", "v_proj"])
    assert (train.epochs, train.learning_rate, train.batch_size) == (10, 1e-3, 1)
    assert ev.max_new_tokens == 64


def test_overrides_are_typed_and_nested():
    cfg = load_config(AdaptConfig, None, ["student.lora.r=16", "student.train.learning_rate=3e-4",
                                          "student.lora.target_modules=[q_proj, k_proj]", "questions=null"])
    assert cfg.student.lora.r == 16 and cfg.student.train.learning_rate == 3e-4
    assert cfg.student.lora.target_modules == ["q_proj", "k_proj"] and cfg.questions is None
    assert parse_override("a.b=true") == {"a": {"b": True}}


@pytest.mark.parametrize(
    "override, message",
    [
        ("student.lora.rank=8", "unknown config key 'student.lora.rank'"),
        ("student.lora.r=eight", "expected an integer"),
        ("mode=sometimes", "is not one of"),
        ("student.train.max_grad_norm=[1]", "student.train.max_grad_norm"),
        ("novalue", "must look like"),
    ],
)
def test_bad_overrides_are_user_errors(override, message):
    with pytest.raises(UserError, match=message):
        load_config(AdaptConfig, None, [override])


def test_numbers_and_json_values():
    cfg = load_config(AdaptConfig, None, ["student.train.learning_rate=1e-3", "student.train.weight_decay=-2E-5",
                                          'arc.fallback_recipe={"loss": "output", "learning_rate": 1e-4}'])
    assert cfg.student.train.learning_rate == 1e-3 and cfg.student.train.weight_decay == -2e-5
    assert json.loads(cfg.arc.fallback_recipe) == {"loss": "output", "learning_rate": 1e-4}
    assert load_config(AdaptConfig, None, ["output=runs/1e5"]).output == "runs/1e5"


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: [unclosed\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(AdaptConfig, bad)
    with pytest.raises(UserError, match="not found"):
        load_config(AdaptConfig, tmp_path / "missing.yaml")
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(AdaptConfig, top)
