"""The demonstration's orchestration (ReST-EM + comparison + report + plot) on tiny models and real passages."""

import json
from types import SimpleNamespace

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
