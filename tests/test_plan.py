"""Long documents: split into passages that fit, reported, never cut; sizes that cannot be handled fail at once."""

from __future__ import annotations

import json
import time

import pytest

from core.config import load_config
from core.errors import UserError
from pipeline.documents import Document
from pipeline.plan import fit_sequences, plan_adaptation
from pipeline.settings import AdaptConfig


def _config(tiny_models, **over):
    sets = [f"teacher.model.path={tiny_models['qwen2']}", f"student.model.path={tiny_models['llama']}"]
    return load_config(AdaptConfig, None, sets + [f"{k}={v}" for k, v in over.items()])


def _prose(n_paragraphs: int) -> str:
    para = ("The river town kept its stone bridge for three centuries. Traders crossed it every spring with wool "
            "and salt, and the market grew around the square. ")
    return "\n\n".join(f"Part {i}. " + para * 3 for i in range(n_paragraphs))


def test_a_long_document_is_split_within_every_bound_and_keeps_its_questions(tiny_models):
    doc = Document("long", "Town", _prose(60))
    cfg = _config(tiny_models, **{"passages.max_tokens": 200, "passages.overlap_tokens": 16})
    plan = plan_adaptation(cfg, [doc])
    p = plan.plans["long"]
    assert p.split and len(p.passages) > 5 and max(p.tokens) <= 200
    assert all(x.title == "Town" and not x.questions for x in p.passages)
    # Every word of the document is in some passage, in order.
    words = doc.text.split()
    assert " ".join(w for x in p.passages for w in x.text.split()).count(words[-1]) >= 1
    assert plan.summary()["split_documents"]["long"]["passages"] == len(p.passages)


def test_the_passage_size_is_bounded_by_what_fits(tiny_models):
    cfg = _config(tiny_models, **{"student.train.max_length": 128})
    plan = plan_adaptation(cfg, [Document("d", "T", _prose(20))])
    assert plan.passage_tokens <= 128 and plan.bound == "student.train.max_length"
    with pytest.raises(UserError, match="passages.max_tokens=4000 does not fit"):
        plan_adaptation(_config(tiny_models, **{"passages.max_tokens": 4000}), [Document("d", "T", "short")])


def test_too_many_passages_is_an_error_naming_the_limit(tiny_models):
    cfg = _config(tiny_models, **{"passages.max_tokens": 64, "passages.max_passages": 10})
    with pytest.raises(UserError, match="exceed passages.max_passages=10"):
        plan_adaptation(cfg, [Document("d", "T", _prose(40))])


def test_over_long_training_texts_are_split_not_cut(tiny_models):
    from core.models import load_tokenizer
    from pipeline.passages import token_counter

    count = token_counter(load_tokenizer(str(tiny_models["llama"])))
    long = _prose(3)
    texts, n = fit_sequences(["short line", long], count, 64)
    assert n == 1 and texts[0] == "short line" and len(texts) > 2 and max(count(t) for t in texts) <= 64
    assert " ".join(texts[1:]).split() == long.split()


def test_a_2mb_document_dry_run_is_planned_in_seconds_and_loads_no_model(tiny_models, tmp_path, capsys):
    from pipeline.cli import main

    doc = tmp_path / "big.txt"
    doc.write_text(_prose(2000) * 3)  # about 2 MB
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as done:
        main(["adapt-student", "--docs", str(doc), "--teacher", str(tiny_models["qwen2"]), "--student",
              str(tiny_models["llama"]), "--dry-run", "--set", "passages.max_passages=100000",
              "--output", str(tmp_path / "run")])
    seconds = time.perf_counter() - t0
    out = capsys.readouterr()
    assert done.value.code == 0, out.err
    report = json.loads(out.out)
    assert report["plan"]["passages"] > 500 and report["estimate"]["optimizer_steps"] > 0
    assert "estimated_seconds_rough" in report["estimate"] and "split into" in out.err
    assert not (tmp_path / "run").exists() and seconds < 60
