"""`train-teacher --warm-start FILE`: SFT the teacher on (prompt, completion) pairs before round 1, on tiny models."""

import hashlib
import json
from pathlib import Path

import pytest

from core.errors import UserError
from tests.conftest import SHARED
from tests.test_cli_adapt import run_cli
from tests.test_train_teacher import SMALL

SYNTHETIC = SHARED / "data/seal/general-knowledge/data/synthetic_data"
PAPER_PROMPT = ("Let's read the following passage and produce a list of implications derived directly or indirectly "
                "from the content.\n\nPassage:\n{title}\n{context}\n\nImplications:\n")

TRAIN = [
    ("Copper", "Copper is a soft metal with a reddish colour.\nIt conducts heat and electricity very well.",
     "What colour is copper?", "reddish"),
    ("Basalt", "Basalt is a dark rock formed when lava cools quickly near the surface.",
     "How does basalt form?", "lava cools quickly"),
    ("Tides", "Tides rise and fall twice a day because the Moon pulls on the oceans.",
     "What pulls on the oceans?", "the Moon"),
    ("Owls", "Owls hunt at night and can turn their heads a long way round.",
     "When do owls hunt?", "at night"),
]
HELDOUT = [
    ("Glaciers", "Glaciers are slow rivers of ice that carve valleys over thousands of years.",
     "What do glaciers carve?", "valleys"),
    ("Bees", "Bees make honey from the nectar of flowers and store it in wax combs.",
     "What do bees make honey from?", "nectar"),
]


def _docs_file(path: Path, docs) -> Path:
    path.write_text(json.dumps([{"title": t, "context": c, "questions": [{"question": q, "answer": a}]}
                                for t, c, q, a in docs]))
    return path


def _paper_jsonl(path: Path, docs, completion="1. It is a fact.\n2. It follows.") -> Path:
    path.write_text("".join(json.dumps({"prompt": PAPER_PROMPT.format(title=t, context=c), "completion": completion})
                            + "\n" for t, c, *_ in docs))
    return path


def _jsonl(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


@pytest.fixture
def data(tmp_path):
    return {"docs": _docs_file(tmp_path / "docs.json", TRAIN), "heldout": _docs_file(tmp_path / "heldout.json", HELDOUT)}


def _args(tiny_models, data, out, *extra):
    return ["train-teacher", "--docs", data["docs"], "--teacher", tiny_models["llama"], "--student",
            tiny_models["qwen2"], "--rounds", 1, "--output", out, "--quiet", *SMALL,
            "--set", f"data.heldout_docs=[{data['heldout']}]", *extra]


# ----------------------------------------------------------------------------------------- (a) parsing
def test_both_file_kinds_parse_and_render_with_the_runs_template(data, tmp_path):
    from core.config import load_config
    from pipeline.settings import TrainTeacherConfig
    from pipeline.documents import Document
    from pipeline.tasks.knowledge import KnowledgeTask, teacher_prompt
    from pipeline.warm_start import warm_start_pairs
    from teacher.prompts import load_template
    from teacher.warm_start import parse_raw_prompt, read_pairs

    jsonl = _paper_jsonl(tmp_path / "sft.jsonl", TRAIN[:2])
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"title": "Tides", "context": TRAIN[2][1], "questions": [],
                                    "completions": ["first", "second", "third"], "prompt": "ignored"}]))
    pairs = read_pairs([str(jsonl), str(records)])
    assert [(p.title, p.passage, p.completion) for p in pairs] == [
        ("Copper", TRAIN[0][1], "1. It is a fact.\n2. It follows."), ("Basalt", TRAIN[1][1], "1. It is a fact.\n2. It follows."),
        ("Tides", TRAIN[2][1], "first")]
    assert pairs[0].where == f"{jsonl} line 1" and pairs[2].where == f"{records} [0]"
    assert len(read_pairs([str(records)], completions_per_passage=None)) == 3
    assert len(read_pairs([str(records)], completions_per_passage=2)) == 2
    # the paper's cues: none (the prompt ends after the passage), self-QA's "Question 1: "
    assert parse_raw_prompt("Passage:\nT\nLine one.\n\nLine two.\n\n", "x") == ("T", "Line one.\n\nLine two.")
    assert parse_raw_prompt("Rewrite it.\n\nPassage:\nT\nBody.\n\nQuestion 1: ", "x") == ("T", "Body.")

    for template in ("self_qa", "no_prompt"):
        cfg = load_config(TrainTeacherConfig, None, {"warm_start": {"files": [str(jsonl), str(records)], "limit": 2},
                                                     "self_edit": {"prompt": template}})
        task = KnowledgeTask(cfg.self_edit, cfg.student.train, cfg.student.eval)
        rendered = warm_start_pairs(cfg, task, heldout=[])
        assert len(rendered) == 2  # warm_start.limit
        for r, (title, context, *_) in zip(rendered, TRAIN):
            assert r["prompt"] == teacher_prompt(Document("x", title, context), load_template(template))
            assert "Let's read" not in r["prompt"]  # never the file's own raw prompt


def test_unparseable_pairs_are_one_line_errors_naming_file_and_line(tmp_path):
    from teacher.warm_start import read_pairs

    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": PAPER_PROMPT.format(title="T", context="Body."), "completion": "c"})
    bad.write_text(good + "\n" + json.dumps({"prompt": "no passage here", "completion": "c"}) + "\n")
    with pytest.raises(UserError, match=rf"{bad} line 2: cannot find the passage") as err:
        read_pairs([str(bad)])
    assert "\n" not in str(err.value)
    bad.write_text(good + "\n{broken\n")
    with pytest.raises(UserError, match=rf"{bad} line 2: malformed JSON"):
        read_pairs([str(bad)])
    bad.write_text(json.dumps({"prompt": PAPER_PROMPT.format(title="T", context="Body."), "completion": " "}) + "\n")
    with pytest.raises(UserError, match="line 1: a completion is blank"):
        read_pairs([str(bad)])


@pytest.mark.skipif(not SYNTHETIC.exists(), reason="shared SEAL data not found")
def test_the_papers_files_parse_to_their_source_passages():
    from teacher.warm_start import read_pairs

    sources = {(d["title"], d["context"]) for f in sorted(SYNTHETIC.glob("train/**/*.json"))
               for d in json.loads(f.read_text())}
    for name in ("EM_SFT/sft_best1of5_iter0.jsonl", "EM_SFT/alternate_prompts/sft_best1of5_iter0_prompt-self-qa.jsonl",
                 "EM_SFT/alternate_prompts/sft_best1of5_iter1_prompt-none.jsonl"):
        pairs = read_pairs([str(SYNTHETIC / name)])
        assert len(pairs) == 50 and all((p.title, p.passage) in sources for p in pairs), name
    assert len(read_pairs([str(SYNTHETIC / "train/alternate_prompts/iter0_train_prompt-long.json")],
                          completions_per_passage=None)) == 250


# --------------------------------------------------------------------------------- (b) refusal of leaks
def test_a_held_out_passage_refuses_the_whole_warm_start(tiny_models, data, tmp_path, capsys):
    warm = _paper_jsonl(tmp_path / "warm.jsonl", [TRAIN[0], HELDOUT[1]])
    out = tmp_path / "run"
    code, _, err = run_cli(_args(tiny_models, data, out, "--warm-start", warm), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "warm start refused: 1 of 2 pairs" in err and "'Bees'" in err and f"{warm} line 2" in err
    assert not out.exists()  # nothing trained, no run folder

    # a passage of a warm_start.exclude file (any document file), whitespace aside, is refused the same way
    other = tmp_path / "exclude.txt"
    other.write_text("  Owls hunt at night and can turn\n their heads a long way round.\n")
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"title": "Owls", "context": TRAIN[3][1], "completions": ["c"]}]))
    code, _, err = run_cli(_args(tiny_models, data, out, "--warm-start", records,
                                 "--set", f"warm_start.exclude=[{other}]"), capsys)
    assert code == 2 and "warm start refused: 1 of 1 pairs" in err and "warm_start.exclude" in err, err
    assert not out.exists()


@pytest.mark.skipif(not SYNTHETIC.exists(), reason="shared SEAL data not found")
def test_the_papers_evaluation_prompts_are_refused(tiny_models, squad_file, tmp_path, capsys):
    lines = (SYNTHETIC / "EM_SFT/alternate_prompts/sft_best1of1_iter0_prompt-none.jsonl").read_text().splitlines()
    warm = tmp_path / "two.jsonl"
    warm.write_text(lines[0] + "\n" + lines[1] + "\n")
    out = tmp_path / "run"
    code, _, err = run_cli(["train-teacher", "--docs", squad_file, "--teacher", tiny_models["llama"], "--student",
                            tiny_models["qwen2"], "--rounds", 1, "--output", out, "--quiet", *SMALL,
                            "--warm-start", warm, "--set", f"warm_start.exclude=[{SYNTHETIC / 'eval/base_val.json'}]"],
                           capsys)
    assert code == 2 and "warm start refused: 2 of 2 pairs" in err and "Genghis Khan" in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------- (c) a warm-started run
def _sample(cfg, adapter, records):
    """The held-out self-edits as the given teacher writes them (same prompts, seeds, settings)."""
    from dataclasses import replace

    from core.lora import load_with_lora
    from core.models import load_tokenizer
    from teacher.backends import TransformersBackend

    model = cfg.teacher.model
    if adapter:
        backend = TransformersBackend(model, peft_model=load_with_lora(model, adapter, None, trainable=False),
                                      tokenizer=load_tokenizer(model.path))
    else:
        backend = TransformersBackend(model)
    gen = replace(cfg.teacher.generation, num_samples=1)
    return [backend.sample([r["prompt"]], gen, [r["seed"]])[0][0].text for r in records]


def test_warm_start_trains_first_is_evaluated_at_round_0_and_resumes(tiny_models, data, tmp_path, capsys):
    from core.config import load_config
    from pipeline.settings import TrainTeacherConfig
    from pipeline.tasks.knowledge import teacher_prompt
    from pipeline.documents import Document
    from teacher.prompts import load_template

    warm = _paper_jsonl(tmp_path / "warm.jsonl", TRAIN[:2])
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"title": "Tides", "context": TRAIN[2][1], "completions": ["Tides rise.", "No."]}]))
    out = tmp_path / "run"
    args = _args(tiny_models, data, out, "--warm-start", warm, "--warm-start", records,
                 "--set", "m_step.learning_rate=1e-2")
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err

    ws = out / "warm_start"
    info = json.loads((ws / "data.json").read_text())
    assert info["pairs"] == 3 and [f["path"] for f in info["files"]] == [str(warm), str(records)]
    assert [f["sha256"] for f in info["files"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in (warm, records)]
    pairs = _jsonl(ws / "pairs.jsonl")
    template = load_template("implications")
    assert [p["prompt"] for p in pairs] == [teacher_prompt(Document("x", t, c), template) for t, c, *_ in TRAIN[:3]]
    from teacher.warm_start import pairs_sha256

    assert info["pairs_sha256"] == pairs_sha256(pairs)
    m = json.loads((ws / "m_step.json").read_text())
    assert m["pairs"] == 3 and m["steps"] >= 1 and m["init"] == "fresh" and m["first_loss"] is not None
    assert m["in_run"] == {"teacher_adapter": "warm_start/teacher"}
    assert (ws / "teacher/adapter_model.safetensors").exists()

    # round 0's held-out self-edits are the warm teacher's; round 1's M-step continues its LoRA
    cfg = load_config(TrainTeacherConfig, out / "config.yaml")
    held = _jsonl(out / "round_0/heldout_samples.jsonl")
    written = [r["self_edit"] for r in held]
    assert _sample(cfg, ws / "teacher", held) == written
    assert _sample(cfg, None, held) != written
    assert json.loads((out / "round_1/m_step.json").read_text())["init"] == str(ws / "teacher")
    metrics = _jsonl(out / "metrics.jsonl")
    assert metrics[0]["warm_start"] == {k: m[k] for k in ("pairs", "steps", "first_loss", "last_loss")}
    assert "| warm start | - | - | SFT: 3 pairs" in stdout and "| warm start |" in (out / "summary.md").read_text()
    _read_by_the_teacher_benchmark(out, data["heldout"].parent)

    # a rerun resumes without training again; a changed file is refused unless --force
    mtime = (ws / "m_step.json").stat().st_mtime_ns
    code, _, err = run_cli(args, capsys)
    assert code == 0 and (ws / "m_step.json").stat().st_mtime_ns == mtime, err
    warm.write_text(warm.read_text().replace("It follows.", "It follows from it."))
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "trained on other data" in err and str(warm) in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli([*args, "--force"], capsys)
    assert code == 0 and (ws / "m_step.json").stat().st_mtime_ns == mtime, err
    assert json.loads((ws / "data.json").read_text()) == info  # the record of what the teacher was trained on


def _read_by_the_teacher_benchmark(run: Path, data: Path) -> None:
    """benchmarks/teacher_report.py reads this run as runs/teacher/warm: rows (w) and (r1) on both held-out passages,
    with the teacher's and the student's seconds, and round 1's reward statistics."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from teacher_report import rounds, table, teacher_rows

    (data / "runs").mkdir()
    (data / "runs/warm").symlink_to(run)
    rows, seconds, replies = teacher_rows(data / "runs", data)
    assert set(rows) == {"w", "r1"} and all(set(r) == {0, 1} for r in rows.values())
    assert all(len(replies[r][i]) == 1 and replies[r][i][0]["question"] == HELDOUT[i][2] for r in rows for i in (0, 1))
    assert all(s["sample_median_s"] is not None and s["absorb_median_s"] > 0 for s in seconds.values())
    assert "| (r1) after ReST-EM round 1 | 2 |" in table(rows, seconds)
    assert rounds(data / "runs").splitlines()[2].startswith("| 1 | ")


def test_rounds_zero_merged_warm_start_is_the_final_teacher(tiny_models, data, tmp_path, capsys):
    warm = _paper_jsonl(tmp_path / "warm.jsonl", TRAIN[:1])
    out = tmp_path / "run"
    code, stdout, err = run_cli([*_args(tiny_models, data, out, "--warm-start", warm, "--set",
                                        "rest_em.merge_teacher=true"), "--rounds", 0], capsys)
    assert code == 0, err
    m = json.loads((out / "warm_start/m_step.json").read_text())
    assert m["teacher_adapter"] is None and m["in_run"] == {"teacher_model": "warm_start/teacher_merged"}
    assert f"trained teacher (pass as --teacher to adapt-student): {out / 'warm_start/teacher_merged'}" in stdout
    assert [m["round"] for m in _jsonl(out / "metrics.jsonl")] == [0]
