"""The sample documents packaged with seal-tt (`pipeline/data/sample_docs.jsonl`: three short made-up documents with
questions): what `seal-tt demo --quick` adapts to, and the fixed text a store measures its drift on."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def sample_docs() -> Path:
    return Path(str(resources.files("pipeline").joinpath("data/sample_docs.jsonl")))
