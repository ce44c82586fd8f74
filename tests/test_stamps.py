"""Records stamped with what made them (issue 22 item 2): a resume redoes the records whose input or model changed,
keeps the others, and stamps the records of a folder written before stamps without redoing them."""

import json
from pathlib import Path

import pytest

from pipeline import stamps
from tests.test_cli_adapt import FAST, run_cli


def _jsonl(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


# ------------------------------------------------------------------------------------------------ the helper
def test_check_keeps_matching_redoes_changed_and_stamps_legacy():
    a, b = stamps.stamp("text a", "prompt a", "m1"), stamps.stamp("text b", "prompt b", "m1")
    c = stamps.stamp("text c", "prompt c", "m1")
    assert a == stamps.stamp("text a", "prompt a", "m1") and a != stamps.stamp("text a", "prompt a", "m2")
    assert a != stamps.stamp("text a!", "prompt a", "m1") and a != stamps.stamp("text a", "prompt a!", "m1")
    groups = {
        "same": [{"x": 1, "stamp": a}],
        "changed": [{"x": 2, "stamp": stamps.stamp("old text", "prompt b", "m1")}],
        "legacy_ok": [{"x": 3, "prompt": "p"}],
        "legacy_bad": [{"x": 4, "prompt": "q"}],
        "other_model": [{"x": 5, "stamp": stamps.stamp("text c", "prompt c", "m0")}],
        "not_ours": [{"x": 6}],
    }
    expected = {"same": a, "changed": b, "legacy_ok": c, "legacy_bad": c, "other_model": c}
    kept, redo, stamped = stamps.check(groups, expected, legacy=lambda key, recs: recs[0]["prompt"] == "p")
    assert set(kept) == {"same", "legacy_ok", "not_ours"}
    assert sorted(redo) == ["changed", "legacy_bad", "other_model"] and stamped == 1
    assert kept["legacy_ok"][0]["stamp"] == c
    # a model that cannot be identified now (its weights gone): records are checked by their input alone
    unknown = stamps.stamp("text a", "prompt a", None)
    kept, redo, _ = stamps.check({"a": [{"stamp": a}], "b": [{"stamp": b}]}, {"a": unknown, "b": unknown})
    assert set(kept) == {"a"} and redo == ["b"]
    # without a legacy test, unstamped records are redone
    _, redo, _ = stamps.check({"k": [{"x": 1}]}, {"k": a})
    assert redo == ["k"]


def test_resume_rewrites_the_file_and_says_how_many_were_redone(tmp_path, capsys):
    from core.progress import set_quiet

    set_quiet(False)
    path = tmp_path / "records.jsonl"
    a = stamps.stamp("a", "", "m")
    recs = {"a": [{"k": "a", "stamp": a}], "b": [{"k": "b", "stamp": stamps.stamp("old", "", "m")}],
            "c": [{"k": "c"}]}
    path.write_text("".join(json.dumps(r) + "\n" for rs in recs.values() for r in rs))
    expected = {"a": a, "b": stamps.stamp("new", "", "m"), "c": stamps.stamp("c", "", "m")}
    kept = stamps.resume(path, recs, expected, legacy=lambda key, rs: True, what="things", unit="units")
    assert set(kept) == {"a", "c"}
    assert _jsonl(path) == [{"k": "a", "stamp": a}, {"k": "c", "stamp": expected["c"]}]
    assert "things: 1 redone" in capsys.readouterr().err


def test_recorded_model_agrees_reads_earlier_starts(tmp_path):
    assert stamps.recorded_model_agrees(tmp_path, "teacher", "sha256:x")  # nothing recorded: cannot tell
    entry = lambda h: {"models": {"teacher": {"path": "t", "sha256": h}}}  # noqa: E731
    (tmp_path / "provenance.json").write_text(json.dumps({"created": entry("x"), "resumed": [entry("y")]}))
    # the last entry is this start's own: only the earlier ones tell what wrote the records
    assert stamps.recorded_model_agrees(tmp_path, "teacher", "sha256:x")
    assert not stamps.recorded_model_agrees(tmp_path, "teacher", "sha256:y")
    assert not stamps.recorded_model_agrees(tmp_path, "student", "sha256:x")


# ------------------------------------------------------------------------------------------- adapt-student
@pytest.fixture
def counted_teacher(monkeypatch):
    """Every prompt the teacher is asked to write for, in order."""
    import teacher.backends as backends

    prompts = []
    original = backends.TransformersBackend.sample

    def sample(self, batch, *args, **kwargs):
        prompts.extend(batch)
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(backends.TransformersBackend, "sample", sample)
    return prompts


def _docs(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Velmora is a river town with a stone bridge.")
    (docs / "b.txt").write_text("Ada Quill was the mayor of Velmora in 1887.")
    return docs


def _args(tiny_models, docs, out, teacher="llama"):
    return ["adapt-student", "--docs", docs, "--teacher", tiny_models[teacher], "--student", tiny_models["qwen2"],
            "--output", out, *FAST]


def _by_doc(path):
    out = {}
    for r in _jsonl(path):
        out.setdefault(r["document"], []).append(r)
    return out


def test_an_edited_document_is_redone_and_an_unchanged_one_is_not(tiny_models, tmp_path, capsys, counted_teacher):
    docs, out = _docs(tmp_path), tmp_path / "run"
    code, _, err = run_cli(_args(tiny_models, docs, out), capsys)
    assert code == 0, err
    first = _by_doc(out / "self_edits.jsonl")
    assert all(r["stamp"]["model"].startswith("sha256:") for rs in first.values() for r in rs)
    assert len(counted_teacher) == 2

    (docs / "a.txt").write_text("Velmora is a mountain town with an iron bridge.")
    counted_teacher.clear()
    code, _, err = run_cli(_args(tiny_models, docs, out), capsys)
    assert code == 0, err
    assert "1 redone" in err and "complete" in err
    assert len(counted_teacher) == 1 and "iron bridge" in counted_teacher[0]  # only the edited document
    second = _by_doc(out / "self_edits.jsonl")
    assert second["b"] == first["b"]
    assert all(r["stamp"] != first["a"][0]["stamp"] and "iron bridge" in r["prompt"] for r in second["a"])
    assert len(second["a"]) == len(first["a"])

    # nothing changed since: the finished run is reused as it is, the teacher not asked again
    counted_teacher.clear()
    code, _, err = run_cli(_args(tiny_models, docs, out), capsys)
    assert code == 0 and "report is reused" in err and not counted_teacher


def test_another_teacher_redoes_the_self_edits(tiny_models, tmp_path, capsys, counted_teacher):
    docs, out = _docs(tmp_path), tmp_path / "run"
    assert run_cli(_args(tiny_models, docs, out), capsys)[0] == 0
    first = _by_doc(out / "self_edits.jsonl")
    (out / "report.json").unlink()  # killed before the end: a resume
    counted_teacher.clear()
    code, _, err = run_cli([*_args(tiny_models, docs, out, teacher="qwen2"), "--force"], capsys)
    assert code == 0, err
    assert "2 redone" in err and len(counted_teacher) == 2
    second = _by_doc(out / "self_edits.jsonl")
    assert {r["stamp"]["model"] for rs in second.values() for r in rs} == {stamps.model_id(tiny_models["qwen2"])}
    assert all(second[d][0]["stamp"]["model"] != first[d][0]["stamp"]["model"] for d in ("a", "b"))


def test_a_folder_without_stamps_resumes_without_redoing_and_ends_up_stamped(tiny_models, tmp_path, capsys,
                                                                             counted_teacher):
    docs, out = _docs(tmp_path), tmp_path / "run"
    assert run_cli(_args(tiny_models, docs, out), capsys)[0] == 0
    stamped = _jsonl(out / "self_edits.jsonl")
    # as the previous version left it, killed after the teacher: records without stamps, no report
    (out / "self_edits.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "stamp"}) + "\n"
                                                  for r in stamped))
    (out / "report.json").unlink()
    counted_teacher.clear()
    code, _, err = run_cli(_args(tiny_models, docs, out), capsys)
    assert code == 0, err
    assert not counted_teacher and "redone" not in err and "stamped" in err
    assert _jsonl(out / "self_edits.jsonl") == stamped


def test_given_edits_are_stamped_with_the_edits_file(tiny_models, tmp_path, capsys):
    docs = _docs(tmp_path)
    edits = tmp_path / "edits.jsonl"
    edits.write_text("".join(json.dumps({"document": d, "self_edit": f"{d} is a fact about Velmora."}) + "\n"
                             for d in ("a", "b")))
    out = tmp_path / "run"
    code, _, err = run_cli(["adapt-student", "--docs", docs, "--edits", edits, "--student", tiny_models["qwen2"],
                            "--output", out, *FAST], capsys)
    assert code == 0, err
    from core.hashing import read_sha256

    assert {r["stamp"]["model"] for r in _jsonl(out / "self_edits.jsonl")} == {f"edits:{read_sha256(edits)}"}


# ------------------------------------------------------------------------------------------------ ReST-EM
def test_rest_em_redoes_the_e_step_records_of_a_changed_passage(tiny_models, squad_file, tmp_path, capsys):
    import shutil

    from tests.test_train_teacher import SMALL

    data = tmp_path / "data" / "squad_val.json"
    data.parent.mkdir()
    shutil.copy(squad_file, data)
    out = tmp_path / "run"
    args = ["train-teacher", "--docs", data, "--teacher", tiny_models["llama"], "--student", tiny_models["qwen2"],
            "--rounds", 1, "--output", out, *SMALL]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    samples, scores = _jsonl(out / "round_1/samples.jsonl"), _jsonl(out / "round_1/e_step.jsonl")
    assert all("stamp" in r for r in samples + scores + _jsonl(out / "round_0/heldout.jsonl"))

    # as if killed once the E-step was scored: the round's later files gone
    for item in (out / "round_1").iterdir():
        if item.name not in ("samples.jsonl", "e_step.jsonl"):
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    metrics = [m for m in _jsonl(out / "metrics.jsonl") if m["round"] == 0]
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    # one passage of round 1 is edited meanwhile (same document id)
    changed, kept = json.loads((out / "splits.json").read_text())["rounds"][0][:2]
    # and the records of the other one lost their stamps (as the previous version wrote them): kept, stamped again
    for name in ("samples.jsonl", "e_step.jsonl"):
        recs = _jsonl(out / "round_1" / name)
        (out / "round_1" / name).write_text("".join(
            json.dumps({k: v for k, v in r.items() if not (k == "stamp" and r["context"] == kept)}) + "\n"
            for r in recs))
    items = json.loads(data.read_text())
    index = int(changed.rsplit("-", 1)[1])
    items[index]["context"] = "Velmora is a river town with a stone bridge. " + items[index]["context"]
    data.write_text(json.dumps(items))

    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert "samples r0 (e_step): 1 redone" in err and "e_step r1: 3 redone" in err
    assert "samples r0 (e_step): 1 written before records were stamped" in err
    assert "e_step r1: 3 written before records were stamped" in err
    samples2, scores2 = _jsonl(out / "round_1/samples.jsonl"), _jsonl(out / "round_1/e_step.jsonl")
    assert [r for r in samples2 if r["context"] == kept] == [r for r in samples if r["context"] == kept]
    assert all("Velmora" in r["prompt"] for r in samples2 if r["context"] == changed)
    assert all("Velmora" not in r["prompt"] for r in samples if r["context"] == changed)
    strip = lambda rs, c: [{k: v for k, v in r.items() if k != "timings"} for r in rs if r["context"] == c]  # noqa
    assert strip(scores2, kept) == strip(scores, kept)
    assert {r["stamp"]["input"] for r in scores2 if r["context"] == changed}.isdisjoint(
        {r["stamp"]["input"] for r in scores if r["context"] == changed})
    assert len(scores2) == len(scores)
