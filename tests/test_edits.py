"""Pre-written self-edits (adapt-student --edits): which file formats, which completions, and clear errors."""

from __future__ import annotations

import json

import pytest

from core.errors import UserError
from pipeline.documents import Document
from pipeline.edits import load_edits

DOCS = [Document("a", "Alpha", "Alpha text."), Document("b", "Beta", "Beta text."), Document("c", "Beta", "Other.")]


def _jsonl(tmp_path, rows):
    p = tmp_path / "edits.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_jsonl_lines_name_documents_by_id_or_unique_title(tmp_path):
    p = _jsonl(tmp_path, [{"document": "Alpha", "completion": "one"}, {"document": "a", "completion": "two"},
                          {"document": "b", "self_edit": "three"}, {"document": "c", "completion": "four"}])
    docs, edits = load_edits(p, DOCS)
    assert docs == DOCS and edits == {"a": ["one"], "b": ["three"], "c": ["four"]}
    _, edits = load_edits(p, DOCS, count=None)
    assert edits["a"] == ["one", "two"]
    two_each = _jsonl(tmp_path, [{"document": d.id, "completion": f"{d.id}{i}"} for d in DOCS for i in range(2)])
    _, edits = load_edits(two_each, DOCS, start=1, count=1)
    assert edits == {"a": ["a1"], "b": ["b1"], "c": ["c1"]}


@pytest.mark.parametrize("rows, message", [
    ([{"document": "Beta", "completion": "x"}], "names 2 documents"),
    ([{"document": "zeta", "completion": "x"}], "no document 'zeta'"),
    ([{"document": "a", "completion": "x"}], "no self-edit for document 'b'"),
    ([{"document": "a"}], "needs \"document\""),
])
def test_jsonl_mistakes_are_one_line_errors(tmp_path, rows, message):
    with pytest.raises(UserError, match=message):
        load_edits(_jsonl(tmp_path, rows), DOCS)


def test_asking_for_more_completions_than_a_document_has_is_an_error(tmp_path):
    p = _jsonl(tmp_path, [{"document": d.id, "completion": "x"} for d in DOCS])
    with pytest.raises(UserError, match="ask for more"):
        load_edits(p, DOCS, count=2)


def test_the_papers_json_brings_its_own_passages_and_questions(tmp_path):
    data = [{"title": "T", "context": "Some passage.", "questions": [{"question": "Q?", "answer": "A"}],
             "completions": ["first", "second"]}]
    p = tmp_path / "paper.json"
    p.write_text(json.dumps(data))
    docs, edits = load_edits(p, None)
    assert len(docs) == 1 and docs[0].questions and edits[docs[0].id] == ["first"]
    _, edits = load_edits(p, None, start=1)
    assert edits[docs[0].id] == ["second"]
    with pytest.raises(UserError, match="leave out --docs"):
        load_edits(p, DOCS)


def test_the_real_papers_file_loads_with_a_limit():
    from tests.conftest import SHARED

    path = SHARED / "data/seal/general-knowledge/data/synthetic_data/eval/base_val.json"
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    docs, edits = load_edits(path, None, limit=3)
    assert len(docs) == 3 and all(len(edits[d.id]) == 1 and edits[d.id][0] for d in docs)
    assert all(d.questions for d in docs)


def test_the_cli_absorbs_given_edits_and_reports_the_sequence_cap(tiny_models, tmp_path, capsys):
    from pipeline.cli import main

    doc = tmp_path / "doc.txt"
    doc.write_text("Velmora is a river town. Its bridge is made of grey stone.")
    long_edit = "\n".join(f"Fact number {i}: Velmora has a grey stone bridge." for i in range(45))
    edits = _jsonl(tmp_path, [{"document": "doc", "completion": long_edit}])
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as done:
        main(["adapt-student", "--docs", str(doc), "--edits", str(edits), "--student", str(tiny_models["llama"]),
              "--set", "student.train.epochs=1", "--set", "student.eval.max_new_tokens=4", "--output", str(out)])
    err = capsys.readouterr().err
    assert done.value.code == 0, err
    report = json.loads((out / "report.json").read_text())
    # 30 of the 45 lines, plus the passage; the 15 left out are said, not silently dropped.
    assert report["training_sequences"] == 31 and report["sequences_over_cap"] == 15
    assert "15 sequences beyond the cap were left out" in err and "no teacher loaded" in err
    rec = json.loads((out / "self_edits.jsonl").read_text())
    assert rec["split"]["dropped_over_cap"] == 15 and len(rec["training_texts"]) == 30
