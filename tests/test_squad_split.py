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


def test_each_benchmark_plan_reads_only_the_passages_of_its_use(monkeypatch):
    """Selection plans never touch an evaluation passage, and the evaluation plan touches nothing else."""
    import real_recipe

    split = squad_split.load()
    use_of = {(e["pool"], e["index"]): use for use, entries in split["uses"].items() for e in entries}
    monkeypatch.setattr(real_recipe, "recipe", lambda: ("rewrite", real_recipe.Setting()))
    for name, use in (("forms", "selection"), ("distill:rewrite,self_qa", "selection"),
                      ("inner:rewrite:distill", "selection"), ("eval-baselines", "evaluation"),
                      ("eval", "evaluation")):
        jobs = real_recipe.plan(name)
        assert jobs and {use_of[j.pool, j.passage] for j in jobs} == {use}, name
        assert len({j.key for j in jobs}) == len(jobs), name
        assert all(j.setting == "recipe" or j.setting in real_recipe.SETTINGS for j in jobs), name
    assert {j.passage for j in real_recipe.plan("eval")} == set(range(48))


def test_workers_sharing_a_plan_never_hold_the_same_job(tmp_path):
    import real_recipe

    job = real_recipe.plan("forms")[0]
    with real_recipe._claim(tmp_path, job) as first:
        with real_recipe._claim(tmp_path, job) as second:
            assert (first, second) == (True, False)
    with real_recipe._claim(tmp_path, job) as again:  # released when its holder is done (or dies)
        assert again
