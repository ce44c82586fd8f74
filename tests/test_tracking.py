"""`report_to`: one tracker run per train-teacher command, with item, round and M-step scalars in it."""

import json

import pytest

from tests.test_cli_adapt import run_cli
from tests.test_train_teacher import SMALL, _jsonl

pytest.importorskip("tensorboard", reason="the tracker test needs tensorboard (the dev extra installs it)")


def test_train_teacher_reports_items_rounds_and_m_step_losses_to_tensorboard(tiny_models, squad_file, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    code, _, err = run_cli(["train-teacher", "--docs", squad_file, "--teacher", tiny_models["llama"],
                            "--student", tiny_models["qwen2"], "--rounds", 1, "--output", out, "--quiet", *SMALL,
                            "--set", "report_to=[tensorboard]"], capsys)
    assert code == 0, err
    runs = list((out / "tensorboard").iterdir())
    assert len([p for p in runs if p.name.startswith("events.")]) == 1  # one tracker run, none from the M-step
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    e_step = _jsonl(out / "round_1/e_step.jsonl")
    rewards = [ev.value for ev in acc.Scalars("e_step/reward")]
    assert rewards == pytest.approx([r["reward"] for r in e_step])
    heldout = {ev.step: ev.value for ev in acc.Scalars("round/heldout_score")}
    metrics = _jsonl(out / "metrics.jsonl")
    assert heldout == pytest.approx({m["round"]: m["heldout"]["score_mean"] for m in metrics})
    losses = json.loads((out / "round_1/m_step.json").read_text())["losses"]
    assert [ev.value for ev in acc.Scalars("m_step/loss")] == pytest.approx(losses) and losses
    assert {"e_step/items_per_second", "round/fraction_positive", "round/selected", "heldout/reward"} <= tags

    code, _, err = run_cli(["train-teacher", "--docs", squad_file, "--teacher", tiny_models["llama"],
                            "--student", tiny_models["qwen2"], "--rounds", 1, "--output", tmp_path / "other",
                            "--quiet", *SMALL, "--set", "report_to=[tensorbored]"], capsys)
    assert code == 2 and "unknown tracker 'tensorbored'" in err
