"""`seal-tt train-teacher` (ReST-EM for knowledge incorporation) end to end on tiny models."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_cli_adapt import run_cli

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--set", "data.contexts_per_round=2", "--set", "data.heldout_contexts=2",
         "--set", "teacher.generation.num_samples=3", "--set", "teacher.generation.max_new_tokens=24",
         "--set", "rest_em.seeds_per_edit=2", "--set", "student.train.epochs=1",
         "--set", "student.eval.max_new_tokens=6", "--set", "m_step.epochs=1",
         # random-weight students never beat their baseline; keep the best anyway so the M-step runs
         "--set", "rest_em.must_beat_baseline=false",
         "--set", "m_step.lora.r=4", "--set", "m_step.lora.alpha=8", "--set", "student.lora.r=4"]


def _jsonl(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def _stable(records):
    return [{k: v for k, v in r.items() if k != "timings"} for r in records]


def test_two_rounds_leave_records_selections_checkpoints_and_metrics(tiny_models, squad_file, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(["train-teacher", "--docs", squad_file, "--teacher", tiny_models["llama"],
                                 "--student", tiny_models["qwen2"], "--rounds", 2, "--output", out, "--quiet", *SMALL],
                                capsys)
    assert code == 0, err
    assert "| round |" in stdout
    metrics = _jsonl(out / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [0, 1, 2]
    for m in metrics[1:]:
        assert m["selected"] == 2 and m["e_step"]["self_edits"] == 6
        assert {"reward_mean", "reward_std", "fraction_positive"} <= set(m["e_step"])
        assert m["heldout"]["contexts"] == 2
    splits = json.loads((out / "splits.json").read_text())
    assert not set(splits["heldout"]) & set(splits["rounds"][0] + splits["rounds"][1])
    assert not set(splits["rounds"][0]) & set(splits["rounds"][1])  # fresh contexts per round
    for r in (1, 2):
        rd = out / f"round_{r}"
        records = _jsonl(rd / "e_step.jsonl")
        assert len(records) == 6 and all(len(x["scores"]) == 2 for x in records if x["valid"])
        assert all(x["reward"] == pytest.approx(sum(x["rewards"]) / 2) for x in records if x["valid"])
        # each seed's replies are kept whole with their grades, so a record can be graded again without training
        for x in (x for x in records if x["valid"]):
            assert len(x["replies"]) == 2 and "baseline_replies" not in x
            for score, replies in zip(x["scores"], x["replies"]):
                assert replies and all(isinstance(q["pred"], str) and q["gold"] and q["question"] for q in replies)
                assert score == pytest.approx(sum(q["score"] for q in replies) / len(replies))
        assert len(_jsonl(rd / "selected.jsonl")) == 2
        assert (rd / "teacher/adapter_model.safetensors").exists()
    m2 = json.loads((out / "round_2/m_step.json").read_text())
    assert m2["init"].endswith("round_1/teacher")  # m_step_init=previous continues last round's LoRA
    baselines = _jsonl(out / "baselines.jsonl")
    keys = [(b["student"], b["context"]) for b in baselines]
    assert len(keys) == len(set(keys))  # cached: computed once per context
    assert all(b["score"] == pytest.approx(sum(q["score"] for q in b["replies"]) / len(b["replies"]))
               for b in baselines)
    assert (out / "summary.md").read_text().count("\n| ") == 4
    assert f"trained teacher (pass as --teacher to adapt-student): {out / 'round_2/teacher'}" in stdout

    # the trained teacher (a LoRA folder) writes self-edits for adapt-student directly
    code, _, err = run_cli(["adapt-student", "--docs", squad_file, "--limit", 1, "--teacher", out / "round_2/teacher",
                            "--student", tiny_models["qwen2"], "--output", tmp_path / "adapt", "--quiet",
                            "--set", "teacher.generation.num_samples=1", "--set", "teacher.generation.max_new_tokens=16",
                            "--set", "student.train.epochs=1", "--set", "student.eval.max_new_tokens=4"], capsys)
    assert code == 0, err
    edits = _jsonl(tmp_path / "adapt/self_edits.jsonl")
    assert len(edits) == 1 and edits[0]["self_edit"]

    # the run is complete: a rerun recomputes nothing; a changed config is refused
    mtime = (out / "round_2/e_step.jsonl").stat().st_mtime
    code, _, err = run_cli(["train-teacher", "--docs", squad_file, "--teacher", tiny_models["llama"],
                            "--student", tiny_models["qwen2"], "--rounds", 2, "--output", out, "--quiet", *SMALL], capsys)
    assert code == 0 and (out / "round_2/e_step.jsonl").stat().st_mtime == mtime
    code, _, err = run_cli(["train-teacher", "--docs", squad_file, "--teacher", tiny_models["llama"],
                            "--student", tiny_models["qwen2"], "--rounds", 2, "--output", out, "--quiet", *SMALL,
                            "--set", "rest_em.selection=all_positive"], capsys)
    assert code == 2 and "another config" in err and "rest_em.selection" in err

    # a moved run folder is the same run: a third round continues from its own round-2 LoRA, at its new place
    moved = tmp_path / "moved"
    out.rename(moved)
    code, stdout, err = run_cli(["train-teacher", "--docs", squad_file, "--teacher", tiny_models["llama"],
                                 "--student", tiny_models["qwen2"], "--rounds", 3, "--output", moved, "--quiet",
                                 *SMALL], capsys)
    assert code == 0, err
    m3 = json.loads((moved / "round_3/m_step.json").read_text())
    assert m3["init"] == str(moved / "round_2/teacher") and m3["in_run"] == {"teacher_adapter": "round_3/teacher"}
    assert f"trained teacher (pass as --teacher to adapt-student): {moved / 'round_3/teacher'}" in stdout
    assert not out.exists() and "moved" in (moved / "config.yaml").read_text()


def _train_teacher_cmd(tiny_models, squad_file, out):
    exe = Path(sys.executable).with_name("seal-tt")
    return [str(exe), "train-teacher", "--docs", str(squad_file), "--teacher", str(tiny_models["qwen2"]),
            "--student", str(tiny_models["llama"]), "--rounds", "1", "--output", str(out), "--quiet", *SMALL,
            "--set", "data.contexts_per_round=3", "--set", "rest_em.seeds_per_edit=1"]


def test_kill_during_e_step_then_resume_equals_uninterrupted(tiny_models, squad_file, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    whole = tmp_path / "whole"
    subprocess.run(_train_teacher_cmd(tiny_models, squad_file, whole), check=True, env=env, capture_output=True)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(_train_teacher_cmd(tiny_models, squad_file, cut), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = cut / "round_1/e_step.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if records.exists() and len(records.read_text().splitlines()) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    n_before = len(_jsonl(records))
    assert 3 <= n_before < 9 and not (cut / "round_1/m_step.json").exists()

    subprocess.run(_train_teacher_cmd(tiny_models, squad_file, cut), check=True, env=env, capture_output=True)
    for name in ("round_1/samples.jsonl", "round_1/e_step.jsonl", "round_1/selected.jsonl",
                 "round_1/heldout.jsonl", "round_0/heldout.jsonl", "baselines.jsonl"):
        a, b = _stable(_jsonl(whole / name)), _stable(_jsonl(cut / name))
        key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
        assert sorted(a, key=key) == sorted(b, key=key), name
    from safetensors.torch import load_file

    wa = load_file(str(whole / "round_1/teacher/adapter_model.safetensors"))
    wb = load_file(str(cut / "round_1/teacher/adapter_model.safetensors"))
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_paper_preset_validates_and_runs_scaled_down(tiny_models, squad_file, tmp_path, capsys):
    from core.config import load_config
    from pipeline.settings import TrainTeacherConfig

    cfg = load_config(TrainTeacherConfig, ROOT / "configs/knowledge_squad.yaml")
    assert (cfg.data.contexts_per_round, cfg.teacher.generation.num_samples, cfg.rest_em.seeds_per_edit,
            cfg.rounds) == (50, 5, 3, 2)
    assert cfg.teacher.model.path == "Qwen/Qwen2.5-7B" == cfg.student.model.path
    assert (cfg.m_step.lora.r, cfg.m_step.lora.alpha, cfg.m_step.learning_rate, cfg.m_step.epochs) == (64, 128, 3e-4, 2)
    assert len(cfg.m_step.lora.target_modules) == 7
    assert (cfg.student.lora.r, cfg.student.lora.alpha, cfg.student.train.epochs) == (32, 64, 10)

    # the same protocol on tiny models: one model writes and learns (student follows the teacher)
    out = tmp_path / "preset"
    code, stdout, err = run_cli(["train-teacher", "--config", ROOT / "configs/knowledge_squad.yaml",
                                 "--docs", squad_file, "--teacher", tiny_models["llama"], "--student",
                                 tiny_models["llama"], "--output", out, "--quiet", *SMALL], capsys)
    assert code == 0, err
    info = json.loads((out / "round_2/m_step.json").read_text())
    assert info["teacher_model"].endswith("round_2/teacher_merged") and info["teacher_adapter"] is None
    students = {b["student"] for b in _jsonl(out / "baselines.jsonl")}
    assert any(s.endswith("round_1/teacher_merged") for s in students)  # round 2 scored on the round-1 teacher


@pytest.mark.parametrize("extra, needle", [
    (["--set", "data.contexts_per_round=2000"], "need"),
    (["--set", "rest_em.student_follows_teacher=true"], "same model"),
    (["--set", "rest_em.selection=best_of_all"], "rest_em.selection"),
    (["--set", "m_step.deepspeed=missing.json"], "missing.json"),
])
def test_bad_train_teacher_input(tiny_models, squad_file, tmp_path, capsys, extra, needle):
    out = tmp_path / "bad"
    code, _, err = run_cli(["train-teacher", "--docs", squad_file, "--teacher", tiny_models["llama"], "--student",
                            tiny_models["qwen2"], "--output", out, "--quiet", *SMALL, *extra], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_documents_without_questions_are_refused(tiny_models, tmp_path, capsys):
    doc = tmp_path / "d.txt"
    doc.write_text("A document with no questions at all.")
    code, _, err = run_cli(["train-teacher", "--docs", doc, "--teacher", tiny_models["llama"], "--student",
                            tiny_models["llama"], "--output", tmp_path / "o"], capsys)
    assert code == 2 and "no questions" in err


def _one_round(tiny_models, squad_file, out, *extra):
    return ["train-teacher", "--docs", squad_file, "--teacher", tiny_models["llama"], "--student",
            tiny_models["qwen2"], "--rounds", 1, "--output", out, "--quiet", *SMALL,
            "--set", "teacher.generation.num_samples=2", "--set", "rest_em.seeds_per_edit=1", *extra]


def test_a_context_distill_student_absorbs_the_self_edits_of_a_round(tiny_models, squad_file, tmp_path, capsys):
    out = tmp_path / "distill"
    code, _, err = run_cli(_one_round(tiny_models, squad_file, out, "--set", "student.train.objective=context_distill",
                                      "--set", "data.contexts_per_round=1", "--set", "data.heldout_contexts=1"), capsys)
    assert code == 0, err
    metrics = _jsonl(out / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [0, 1]
    records = _jsonl(out / "round_1/e_step.jsonl")
    assert len(records) == 2 and any(x["valid"] for x in records)
    assert all(len(x["scores"]) == 1 for x in records if x["valid"])
    assert len(_jsonl(out / "round_1/heldout.jsonl")) == 1
    e = metrics[1]["e_step"]
    assert {"fraction_nonzero", "contexts", "contexts_with_winner"} <= set(e) and e["contexts"] == 1
    assert e["contexts_with_winner"] == 1 == metrics[1]["selected"]  # must_beat_baseline is off in SMALL
    # without rest_em.min_contexts_with_winner no round draws again
    assert "redrawn" not in e and not (out / "round_1/samples_more.jsonl").exists()


def _winners(records):
    return {x["context"] for x in records if x["valid"] and x["reward"] > 0}


def test_a_thin_selection_draws_again_once_and_resumes_from_any_point(tiny_models, squad_file, tmp_path, capsys):
    out = tmp_path / "redraw"
    args = _one_round(tiny_models, squad_file, out, "--set", "rest_em.must_beat_baseline=true",
                      "--set", "rest_em.min_contexts_with_winner=2")
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    rd = out / "round_1"
    first, more = _jsonl(rd / "samples.jsonl"), _jsonl(rd / "samples_more.jsonl")
    contexts = json.loads((out / "splits.json").read_text())["rounds"][0]
    for cid in contexts:  # the redraw's samples continue the numbering, from seeds of their own
        assert [s["sample"] for s in first if s["context"] == cid] == [0, 1]
        assert [s["sample"] for s in more if s["context"] == cid] == [2, 3]
    assert not {s["seed"] for s in first} & {s["seed"] for s in more}
    scored = _jsonl(rd / "e_step.jsonl") + _jsonl(rd / "e_step_more.jsonl")
    assert sorted((x["context"], x["sample"]) for x in scored) == sorted((c, i) for c in contexts for i in range(4))
    before = len(_winners(_jsonl(rd / "e_step.jsonl")))
    assert before < 2, "the tiny student beat its baseline in both contexts: the threshold no longer bites"
    selected = _jsonl(rd / "selected.jsonl")
    e = _jsonl(out / "metrics.jsonl")[1]["e_step"]
    assert e["self_edits"] == 8 and e["redrawn"] is True and e["contexts"] == 2
    assert e["contexts_with_winner_before"] == before
    assert e["contexts_with_winner"] == len({s["context"] for s in selected}) == len(_winners(scored))
    assert json.loads((rd / "selection.json").read_text())["redrawn"] is True
    assert "redrawn" in (out / "summary.md").read_text() and "redrawn" in stdout

    # Killed in the redraw: one context's extra samples cut short, one extra score written; then resumed.
    whole = {name: _stable(_jsonl(rd / name)) for name in ("samples_more.jsonl", "e_step_more.jsonl",
                                                           "selected.jsonl")}
    lines = (rd / "samples_more.jsonl").read_text().splitlines(keepends=True)
    (rd / "samples_more.jsonl").write_text("".join(lines[:3]))
    (rd / "e_step_more.jsonl").write_text((rd / "e_step_more.jsonl").read_text().splitlines(keepends=True)[0])
    for name in ("selected.jsonl", "selection.json", "m_step.json", "heldout.jsonl", "heldout_samples.jsonl"):
        (rd / name).unlink(missing_ok=True)
    shutil.rmtree(rd / "teacher", ignore_errors=True)
    metrics = out / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines(keepends=True)[0])
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    for name, records in whole.items():
        assert sorted(_stable(_jsonl(rd / name)), key=key) == sorted(records, key=key), name
    again = _jsonl(metrics)[1]["e_step"]
    assert {k: again[k] for k in ("self_edits", "redrawn", "contexts_with_winner", "contexts_with_winner_before")} \
        == {k: e[k] for k in ("self_edits", "redrawn", "contexts_with_winner", "contexts_with_winner_before")}


def test_held_out_documents_from_their_own_file_and_a_run_of_no_rounds(tiny_models, tmp_path, capsys):
    from pipeline.documents import load_documents
    from tests.test_warm_start import HELDOUT, TRAIN, _docs_file

    docs, held = _docs_file(tmp_path / "docs.json", TRAIN), _docs_file(tmp_path / "heldout.json", HELDOUT)
    held_ids, train_ids = [d.id for d in load_documents(str(held))], {d.id for d in load_documents(str(docs))}
    models = ["--teacher", tiny_models["llama"], "--student", tiny_models["qwen2"], "--quiet", *SMALL]

    # No rounds and no training documents: the initial teacher evaluated on the held-out file alone.
    only = tmp_path / "only"
    code, stdout, err = run_cli(["train-teacher", "--heldout-docs", held, "--rounds", 0, "--output", only, *models],
                                capsys)
    assert code == 0, err
    assert [m["round"] for m in _jsonl(only / "metrics.jsonl")] == [0] and "| 0 |" in stdout
    assert json.loads((only / "splits.json").read_text()) == {"heldout": held_ids, "rounds": []}
    assert sorted(x["context"] for x in _jsonl(only / "round_0/heldout.jsonl")) == sorted(held_ids)
    assert not (only / "round_1").exists()
    code, _, err = run_cli(["train-teacher", "--heldout-docs", held, "--rounds", 1, "--output", tmp_path / "bad",
                            *models], capsys)
    assert code == 2 and "no training documents" in err

    # data.heldout_contexts keeps the file's first documents; a run of no rounds goes on into round 1.
    out = tmp_path / "run"
    args = ["train-teacher", "--docs", docs, "--heldout-docs", held, "--output", out, *models,
            "--set", "data.heldout_contexts=1"]
    code, _, err = run_cli([*args, "--rounds", 0], capsys)
    assert code == 0, err
    assert json.loads((out / "splits.json").read_text()) == {"heldout": held_ids[:1], "rounds": []}
    code, _, err = run_cli([*args, "--rounds", 1], capsys)
    assert code == 0, err
    splits = json.loads((out / "splits.json").read_text())
    assert splits["heldout"] == held_ids[:1] and len(splits["rounds"][0]) == 2 and set(splits["rounds"][0]) <= train_ids
    assert [m["round"] for m in _jsonl(out / "metrics.jsonl")] == [0, 1]


@pytest.mark.parametrize("fresh", [True, False])
def test_a_run_of_no_rounds_needs_no_training_contexts(fresh):
    from pipeline.settings import DataSettings
    from pipeline.splits import split_contexts

    data = DataSettings(contexts_per_round=5, heldout_contexts=3, fresh_per_round=fresh)
    rounds, heldout = split_contexts(list("abc"), None, data, 0, key=str)
    assert rounds == [] and sorted(heldout) == ["a", "b", "c"]
