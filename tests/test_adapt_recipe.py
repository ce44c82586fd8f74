"""adapt-student as a recipe over library modules: the training sequences carry the passage each was written for,
and student.train.objective=context_distill absorbs with them (joint and per document; sharded refuses it at once).
"""

from __future__ import annotations

import json

import pytest

from core.config import SelfEditSettings
from pipeline.documents import Document
from pipeline.passages import PassagePlan
from pipeline.plan import MARGIN, AdaptPlan
from pipeline.self_edits import training_sequences
from tests.test_adapt_executor import DOCS, data  # noqa: F401  (data: the documents and given self-edits, a fixture)
from tests.test_cli_adapt import run_cli


def _words(text: str) -> int:
    return len(text.split())


def test_each_training_sequence_keeps_the_passage_it_was_written_for_through_every_split():
    a = Document("a", "A", "First part. Second part.")
    p0, p1 = Document("a#p0", "A", "First part."), Document("a#p1", "A", "Second part.")
    b = Document("b", "B", "Bee text.")
    plan = AdaptPlan({"a": PassagePlan(a, [p0, p1], [2, 2], [0, 0]), "b": PassagePlan(b, [b], [2], [0])}, 64,
                     "test", counter=_words)
    long = " ".join(["word"] * 25)  # over max_length - MARGIN = 10 words: split, never cut
    edits = [{"document": "a", "passage": "a#p0", "training_texts": ["x one"]},
             {"document": "a", "passage": "a#p1", "training_texts": [long]},
             {"document": "b", "training_texts": ["z"]}]  # an unsplit document's records name no passage
    got = training_sequences([a, b], edits, plan, self_edit=SelfEditSettings(prefix_title=False),
                             max_length=MARGIN + 10, num_samples=1)
    assert got.split == 1
    pieces = got.texts["a"][1:-2]
    assert len(pieces) >= 3 and " ".join(pieces).split() == long.split()
    assert got.texts["a"][0] == "x one" and got.texts["a"][-2:] == [p0.text, p1.text]  # include_passage
    # The passage as the open-book prompt shows it: titled.
    c0, c1, cb = "A\nFirst part.", "A\nSecond part.", "B\nBee text."
    assert got.contexts["a"] == [c0] + [c1] * len(pieces) + [c0, c1]
    assert got.texts["b"] == ["z", b.text] and got.contexts["b"] == [cb, cb]
    texts, contexts = got.joined([a, b])
    assert texts == got.texts["a"] + got.texts["b"] and contexts == got.contexts["a"] + got.contexts["b"]


def _args(tiny_models, data, out, *extra):
    docs, edits = data
    sets = ["student.train.objective=context_distill", "student.train.epochs=1", "student.eval.max_new_tokens=4",
            "student.lora.r=4", "student.lora.alpha=8", "student.eval.use_chat_template=never"]
    return ["adapt-student", "--docs", docs, "--edits", edits, "--student", tiny_models["llama"], "--output", out,
            "--quiet", *[a for s in sets for a in ("--set", s)], *extra]


@pytest.fixture
def distilled(monkeypatch):
    """Each `train_distill` call's (texts, contexts)."""
    from student.engine import StudentEngine

    calls = []
    original = StudentEngine.train_distill

    def spy(self, texts, contexts, *args, **kwargs):
        calls.append((list(texts), list(contexts)))
        return original(self, texts, contexts, *args, **kwargs)

    monkeypatch.setattr(StudentEngine, "train_distill", spy)
    return calls


@pytest.mark.parametrize("per_document", [False, True])
def test_context_distill_absorbs_with_each_text_s_passage(tiny_models, data, tmp_path, capsys, distilled,
                                                         per_document):
    out = tmp_path / "run"
    code, _, err = run_cli(_args(tiny_models, data, out, *(["--per-document"] if per_document else [])), capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    passages = [f"{d['title']}\n{d['text']}" for d in DOCS]  # titled, as the open-book prompt shows them
    texts = dict(zip([d["id"] for d in DOCS], passages))
    if per_document:  # one adapter per document, distilled from its own text alone
        assert len(distilled) == len(DOCS)
        for (seqs, contexts), passage in zip(distilled, passages):
            assert contexts == [passage] * len(seqs)
    else:  # one adapter, every sequence beside the text of its document (given self-edits: the whole document)
        ((seqs, contexts),) = distilled
        assert len(contexts) == len(seqs) == report["training_sequences"]
        order = [passages.index(c) for c in contexts]
        assert set(contexts) == set(texts.values()) and order == sorted(order)
    assert all(t["steps"] > 0 for t in report["training"])


def test_sharded_training_refuses_context_distill_before_anything_is_written(tiny_models, data, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(_args(tiny_models, data, out, "--nproc", "2"), capsys)
    assert code == 2 and "not supported with sharded training" in err and err.count("\n") == 1, err
    assert not out.exists()
