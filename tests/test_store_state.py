"""The store's typed state: `state.json`, `store.json`, `update.json`, the stored documents and the pending job read
into dataclasses and written back unchanged, whichever version of seal-tt wrote them; and the strategy objects'
parts that need no model (what an update trains, what a changed document does, what a library retires)."""

import json

import pytest

from pipeline.store.state import Manifest, PendingJob, StoreState, StoredDocument, UpdateEntry

# state.json as the first store version (c05f555) wrote it: its updates lack sequences_split, unmeasured and
# teacher_probes; update 1 was retired (a library) and velmora was superseded; one rejected document.
OLD_STATE = {
    "documents": {
        "velmora": {"versions": [
            {"key": "velmora@aaaaaaaaaaaa", "hash": "a" * 64, "update": 1, "order": 0,
             "added": "2024-01-01T00:00:00Z", "probes": 2, "probe_source": "user",
             "superseded_by": "velmora@bbbbbbbbbbbb"},
            {"key": "velmora@bbbbbbbbbbbb", "hash": "b" * 64, "update": 2, "order": 0,
             "added": "2024-01-02T00:00:00Z", "probes": 2, "probe_source": None}]},
    },
    "updates": [
        {"number": 1, "finished": "2024-01-01T00:00:00Z", "accepted": True, "decision": "accepted", "scale": 1.0,
         "documents": ["velmora@aaaaaaaaaaaa"], "new": ["velmora"], "changed": [], "sequences": 3, "replayed": 0,
         "steps": 6, "final_loss": 1.5, "drift_bits_per_token": 0.01, "retention_before": None,
         "retention_after": None, "drop": None, "gate_tries": [{"scale": 1.0, "drop": None, "broken": 0}],
         "probed_earlier": 0, "earlier": 0, "timings": {"teacher_seconds": 0.1}, "adapter_mb": 0.5, "broken": [],
         "notes": [], "metrics": {"updates": 1}, "retired": True},
        {"number": 2, "finished": "2024-01-02T00:00:00Z", "accepted": True, "decision": "scaled", "scale": 0.5,
         "documents": ["velmora@bbbbbbbbbbbb"], "new": [], "changed": ["velmora"], "sequences": 3, "replayed": 0,
         "steps": 6, "final_loss": 1.2, "drift_bits_per_token": 0.02, "retention_before": None,
         "retention_after": None, "drop": 0.1, "gate_tries": [], "probed_earlier": 0, "earlier": 0,
         "timings": {}, "adapter_mb": 0.5, "broken": [], "notes": ["library: ..."], "metrics": {}},
        {"number": 3, "finished": "2024-01-03T00:00:00Z", "accepted": False, "decision": "rejected", "scale": 0.125,
         "documents": ["poison@cccccccccccc"], "new": ["poison"], "changed": [], "sequences": 1, "replayed": 0,
         "steps": 2, "final_loss": 2.0, "drift_bits_per_token": None, "retention_before": 0.9,
         "retention_after": 0.1, "drop": 0.8, "gate_tries": [], "probed_earlier": 1, "earlier": 1, "timings": {},
         "broken": [{"document": "velmora@bbbbbbbbbbbb", "question": "q?", "answers": ["a"]}], "notes": [],
         "metrics": {}},
    ],
    "matrix": [{"update": 1, "scores": {"velmora@aaaaaaaaaaaa": 1.0}, "items": {"velmora@aaaaaaaaaaaa": [1.0, 1.0]},
                "before_new": {"velmora@aaaaaaaaaaaa": 0.0}, "oracle": {}},
               {"update": 2, "scores": {"velmora@bbbbbbbbbbbb": 0.5}, "items": {"velmora@bbbbbbbbbbbb": [0.0, 1.0]},
                "before_new": {}, "oracle": {"velmora@bbbbbbbbbbbb": 1.0}}],
    "base": {"velmora@aaaaaaaaaaaa": 0.0},
    "rejected": {"poison@cccccccccccc": {"update": 3, "id": "poison", "drop": 0.8}},
}


def _text(data) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def test_a_state_of_the_earlier_versions_reads_and_writes_back_equal():
    state = StoreState.from_json(json.loads(_text(OLD_STATE)))
    assert _text(state.to_json()) == _text(OLD_STATE)  # the same keys, values and order
    assert [u.number for u in state.accepted()] == [1, 2] and state.next_number() == 4
    assert list(state.active()) == ["velmora@bbbbbbbbbbbb"] and state.current("velmora").update == 2
    assert state.updates[0].retired and state.updates[1].retired is None
    assert state.updates[0].teacher_probes == [] and state.rejected["poison@cccccccccccc"].drop == 0.8
    # a copy is independent, and a field set on a record that lacked it is written
    copy = state.copy()
    copy.updates[1].retired = True
    assert "retired" not in state.to_json()["updates"][1] and copy.to_json()["updates"][1]["retired"] is True
    # keys this version does not know are kept
    odd = json.loads(_text(OLD_STATE))
    odd["updates"][0]["from_the_future"] = {"x": 1}
    odd["future_section"] = []
    assert StoreState.from_json(odd).to_json() == odd


def test_a_state_written_now_reads_back_equal_and_the_other_records_too():
    entry = UpdateEntry(number=1, accepted=True, decision="accepted", documents=["a@1"],
                        self_edits_by={"a@1": {"teacher": "t", "sha256": "f" * 64, "settings": "s"}})
    state = StoreState(updates=[entry])
    data = json.loads(_text(state.to_json()))
    assert "adapter_mb" not in data["updates"][0] and "retired" not in data["updates"][0]
    assert StoreState.from_json(data) == state and StoreState.from_json(data).to_json() == data
    manifest = {"format": "seal-tt-store", "version": 1, "created": "now", "settings": {"strategy": "joint",
                                                                                       "student.model": {"path": "m"}}}
    m = Manifest.from_json(manifest)
    assert m.to_json() == manifest and m.strategy == "joint" and m.student == {"path": "m"}
    assert m["settings"] == manifest["settings"]  # readable as the JSON object it is
    doc = {"key": "a@1", "id": "a", "title": "A", "text": "t", "hash": "h", "self_edits": ["e"],
           "training_texts": ["x"], "probes": [{"question": "q", "answers": ["a"]}], "probe_source": "user"}
    assert StoredDocument.from_json(doc).to_json() == doc
    old_job = {"number": 3, "documents": ["a@1"]}  # a pending update of the earlier version
    job = PendingJob.from_json(old_job)
    assert job.to_json() == old_job and job.self_edits_by is None


def test_a_document_keeps_the_passage_of_each_training_text_and_an_earlier_record_derives_it():
    from pipeline.store.update import training_pairs

    doc = StoredDocument(key="a@1", id="a", title="A", text="t", training_texts=["x", "y", "z"])
    data = json.loads(_text(doc.with_contexts(["A\np0", "A\np1", "A\np0"]).to_json()))
    assert data["contexts"] == ["A\np0", "A\np1"] and data["context_of"] == [0, 1, 0]  # each passage once
    back = StoredDocument.from_json(data)
    assert back.to_json() == data and back.training_contexts() == ["A\np0", "A\np1", "A\np0"]
    assert training_pairs(back) == [("x", "A\np0"), ("y", "A\np1"), ("z", "A\np0")]
    # A record of an earlier version holds no passages: its texts get its document's own, as distill_context gives it.
    old = {"key": "a@1", "id": "a", "title": "A", "text": "t", "hash": "h", "self_edits": [], "training_texts": ["x"],
           "probes": [], "probe_source": None}
    assert training_pairs(StoredDocument.from_json(old)) == [("x", "A\nt")]
    assert training_pairs(StoredDocument.from_json({**old, "title": ""})) == [("x", "t")]
    for lacking in ("title", "text"):  # nothing to derive it from
        assert training_pairs(StoredDocument.from_json({k: v for k, v in old.items() if k != lacking})) == [("x", None)]
    assert StoredDocument.from_json(old).to_json() == old


def test_a_store_of_the_earlier_version_opens_and_its_state_is_written_back_unchanged(tmp_path):
    from pipeline.store.layout import Store
    from pipeline.store.metrics import store_metrics

    store = Store(tmp_path / "store")
    store.create({"strategy": "library", "student.model": {"path": "m"}})
    for u in OLD_STATE["updates"]:
        store.update_dir(u["number"]).mkdir(parents=True)
        (store.update_dir(u["number"]) / "update.json").write_text(_text(u))
    (store.path / "state.json").write_text(_text(OLD_STATE))
    state = store.state()
    assert store.manifest().strategy == "library" and store_metrics(state)["updates"] == 2
    staged = tmp_path / "staged"
    staged.mkdir()
    store.commit(4, staged, state)  # as an update commits it (here with nothing new)
    assert (store.path / "state.json").read_text() == _text(OLD_STATE)


def test_what_each_strategy_trains_and_what_a_changed_document_does():
    from pipeline.store.config import ReplaySettings
    from pipeline.store.state import Version
    from pipeline.store.strategies import STRATEGIES, strategy_named

    new, earlier = ["n1", "n2"], ["e1", "e2", "e3", "e4"]
    asked = []

    def pool():
        asked.append(1)
        return list(earlier)

    assert strategy_named("merge").training_set(new, pool, ReplaySettings(), 0) == (new, 0)
    assert strategy_named("library").training_set(new, pool, ReplaySettings(), 0) == (new, 0)
    assert not asked  # merge and library never read the earlier documents
    assert strategy_named("joint").training_set(new, pool, ReplaySettings(), 0) == (earlier + new, 4)
    texts, n = strategy_named("replay").training_set(new, pool, ReplaySettings(ratio=0.5), 7)
    assert n == 1 and texts[:2] == new and texts[2] in earlier
    texts, n = strategy_named("replay").training_set(new, pool, ReplaySettings(ratio=3.0, max_sequences=2), 7)
    assert n == 2 and texts == strategy_named("replay").training_set(new, pool, ReplaySettings(ratio=3.0,
                                                                                             max_sequences=2), 7)[0]
    old = Version(key="a@1", update=3)
    assert "cannot undo" in strategy_named("merge").on_changed("a", old)
    assert "joint retrained without" in strategy_named("joint").on_changed("a", old)
    assert strategy_named("library").on_changed("a", old) is None
    assert sorted(STRATEGIES) == ["joint", "library", "merge", "replay"]
    assert [s.routed for s in STRATEGIES.values()] == [False, False, True, False]
    with pytest.raises(Exception, match="unknown store strategy"):
        strategy_named("nope")


def test_a_library_retires_an_adapter_that_holds_no_current_document_and_says_what_answers():
    from pipeline.store.strategies import strategy_named

    state = StoreState.from_json(json.loads(_text(OLD_STATE)))
    state.updates[0].retired = None
    notes = strategy_named("library").retire(state)
    assert state.updates[0].retired is True and len(notes) == 1 and "update 1" in notes[0]
    assert strategy_named("library").retire(state) == []  # once
    assert [(s.number, s.label, s.documents) for s in strategy_named("library").adapter_sets(state)] == [
        (1, "update 1", []), (2, "update 2", ["velmora"])]
    (merged,) = strategy_named("merge").adapter_sets(state)
    assert merged.number is None and merged.label == "2 updates merged" and [u.number for u in merged.updates] == [1, 2]
    (joint,) = strategy_named("joint").adapter_sets(state)
    assert joint.label == "one adapter trained on all (update 2)" and [u.number for u in joint.updates] == [2]
    assert strategy_named("merge").adapter_sets(StoreState()) == []
