"""The committed split of the paper's SQuAD passages: each use (selection, warm start, ReST-EM, evaluation) is
disjoint from the others by passage text, and the file still names the passages it was made from."""

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import squad_split  # noqa: E402


def test_the_uses_are_disjoint_by_passage_text():
    split = squad_split.load()
    owner: dict[str, str] = {}
    for use, entries in split["uses"].items():
        for e in entries:
            assert owner.setdefault(e["sha256"], use) == use, (e, owner[e["sha256"]])
    sizes = {use: len(v) for use, v in split["uses"].items()}
    assert sizes["selection"] >= 32 and sizes["rest_em"] >= 32 and sizes["evaluation"] == 200


def test_the_split_matches_the_data_it_names_and_its_rule():
    if not (SHARED / "data/seal").exists():
        pytest.skip(f"shared data not found at {SHARED}")
    split = squad_split.load()
    pools = {name: squad_split.pool(name) for name in split["pools"]}
    for entries in split["uses"].values():
        for e in entries:
            assert squad_split.sha(pools[e["pool"]][e["index"]]["context"]) == e["sha256"], e
    assert json.loads(json.dumps(squad_split.build())) == split  # the file is what the rule gives
    # No evaluation passage hides in a training pool under another index.
    evaluation = {e["sha256"] for e in split["uses"]["evaluation"]}
    for name in ("alt0", "alt1", "train0"):
        assert not evaluation & {squad_split.sha(p["context"]) for p in pools[name]}
