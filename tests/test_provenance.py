"""Every run folder records what produced it."""

from __future__ import annotations

import json

from core import provenance


def test_a_record_names_code_libraries_models_and_machine(tiny_models, tmp_path):
    entry = provenance.record(tmp_path, {"student": {"path": str(tiny_models["llama"]), "dtype": "float32"},
                                         "teacher": {"path": "org/model-not-cached"}})
    assert entry["libraries"]["torch"] and entry["libraries"]["transformers"] and entry["libraries"]["peft"]
    assert len(entry["models"]["student"]["sha256"]) == 64 and entry["models"]["student"]["dtype"] == "float32"
    assert entry["models"]["teacher"]["hub_revision"] is None
    assert entry["machine"]["torch_threads"] >= 1 and entry["machine"]["device"]
    assert entry["seal_tt"]["commit"] is None or len(entry["seal_tt"]["commit"]) == 40
    again = provenance.record(tmp_path, {"student": {"path": str(tiny_models["llama"])}})
    saved = json.loads((tmp_path / provenance.NAME).read_text())
    assert saved["created"]["models"]["student"]["sha256"] == again["models"]["student"]["sha256"]
    assert len(saved["resumed"]) == 1
