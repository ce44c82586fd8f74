"""The demonstration's orchestration (ReST-EM + comparison + report + plot) on tiny models and real passages."""

import json
from types import SimpleNamespace

import pytest

from pipeline.demo import demo_table, run_demo


def test_run_demo_writes_report_table_and_plot(tiny_models, squad_file, tmp_path):
    passages = json.loads(squad_file.read_text())[:6]
    for p in passages:
        p["questions"] = p["questions"][:2]
    (tmp_path / "rl.json").write_text(json.dumps(passages[:4]))
    (tmp_path / "heldout.json").write_text(json.dumps(passages[4:]))
    wm = SimpleNamespace(root=tmp_path, student=tiny_models["qwen2"], teacher=tiny_models["llama"],
                         data={"rl": tmp_path / "rl.json", "heldout": tmp_path / "heldout.json"},
                         qa_prompt="Question : {question} Answer :", teacher_prompt="Title : {title}\nPassage : {passage}\nNotes :\n")
    small = ["rounds=2", "data.contexts_per_round=2", "data.heldout_contexts=2", "teacher.generation.num_samples=2",
             "teacher.generation.max_new_tokens=16", "student.train.epochs=2", "rest_em.heldout_samples=2",
             "rest_em.must_beat_baseline=false", "m_step.epochs=1", "m_step.lora.r=4", "student.lora.r=4"]
    out = tmp_path / "demo"
    report = run_demo(wm, out, seed=0, overrides=small, progress=False)
    assert set(report["conditions"]) == {"no adaptation", "raw document", "round-0 teacher self-edits",
                                         "trained teacher self-edits (round 2)"}
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    assert all(c["n"] == 2 for c in report["conditions"].values())
    assert (out / "demo.png").stat().st_size > 1000 and (out / "report.json").exists()
    assert (out / "demo.md").read_text() == demo_table(report) and "target >= 2x" in demo_table(report)
    assert json.loads((out / "report.json").read_text())["targets"].keys() == {"reward_gain_over_round0",
                                                                                "trained_vs_raw_accuracy"}
    # a rerun resumes: nothing is recomputed and the same report comes back
    again = run_demo(wm, out, seed=0, overrides=small, progress=False)
    assert again == report


def test_world_demo_runs_each_seed_then_summarises_over_seeds(tiny_world_recipe, tmp_path):
    from pipeline.demo import summary_table, world_demo

    small = ["data.contexts_per_round=2", "data.heldout_contexts=3", "teacher.generation.num_samples=2",
             "teacher.generation.max_new_tokens=24", "student.train.epochs=2", "rest_em.heldout_samples=1",
             "rest_em.must_beat_baseline=false", "m_step.epochs=1", "m_step.lora.r=4", "student.lora.r=4"]
    out = tmp_path / "demo"
    summary = world_demo(out, seeds=[3, 4], overrides=small, progress=False, cache=tmp_path / "cache",
                         recipe=tiny_world_recipe)
    assert summary["seeds"] == [3, 4] and [r["world_seed"] for r in summary["per_seed"]] == [3, 4]
    for seed in (3, 4):
        report = json.loads((out / f"seed_{seed}/report.json").read_text())
        assert report["world_seed"] == seed and report["heldout_people"] == 3
        assert (out / f"seed_{seed}/demo.png").stat().st_size > 1000
        # every figure is over people: one value per held-out person, whatever the samples per person
        assert all(r["heldout_reward"]["n"] == 3 for r in report["rounds"])
        assert report["targets"]["reward_gain_over_round0"]["n"] == 3
        # the world parses each held-out self-edit into the style ReST-EM selects among
        for r in report["rounds"]:
            assert set(r["self_edit_styles"]) <= {"qa", "facts", "partial", "restate", "noise", "mixed", "empty"}
            assert sum(r["self_edit_styles"].values()) == pytest.approx(1.0)
        assert "held-out self-edits by style" in (out / f"seed_{seed}/demo.md").read_text()
    assert json.loads((out / "report.json").read_text()) == summary
    table = (out / "demo.md").read_text()
    assert table == summary_table(summary) and "| 3 | " in table and "| 4 | " in table and "seeds." in table
    assert (out / "demo.png").stat().st_size > 1000
    # a rerun resumes every seed and recomputes nothing
    mtime = (out / "seed_4/round_2/e_step.jsonl").stat().st_mtime
    again = world_demo(out, seeds=[3, 4], overrides=small, progress=False, cache=tmp_path / "cache",
                       recipe=tiny_world_recipe)
    assert again == summary and (out / "seed_4/round_2/e_step.jsonl").stat().st_mtime == mtime


def test_ratio_interval_is_paired_and_never_infinite():
    from pipeline.demo import _ratio_ci

    same = _ratio_ci([0.6, 0.2, 0.4], [0.3, 0.1, 0.2])
    assert same["mean"] == pytest.approx(2.0) and same["low"] == pytest.approx(2.0) and same["high"] == pytest.approx(2.0)
    spread = _ratio_ci([1.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.0, 0.0])
    assert spread["mean"] == pytest.approx(2.0) and spread["low"] < 2.0 and spread["high"] is None  # some draws 0/0
    assert _ratio_ci([0.5, 0.5], [0.0, 0.0])["mean"] is None
    json.dumps(spread, allow_nan=False)


@pytest.mark.parametrize("args, message", [
    (["--set", "rest_em.no_such_key=1"], "no_such_key"),
    (["--seed", "1", "--seed", "1"], "repeat"),
    (["--output", "{tmp}/a_file"], "output folder"),
    ([], "world cache"),  # SEAL_TT_CACHE below a file
])
def test_demo_rejects_bad_input_in_one_line_before_building_anything(args, message, tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    (tmp_path / "a_file").write_text("not a folder")
    cache = tmp_path / ("a_file/cache" if not args else "cache")
    monkeypatch.setenv("SEAL_TT_CACHE", str(cache))
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--output", str(tmp_path / "out"), "--quiet", *[a.format(tmp=tmp_path) for a in args]])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error:") and message in err and err.count("\n") == 1, err
    assert not list(tmp_path.glob("**/world-*")) and not (tmp_path / "out").exists()
