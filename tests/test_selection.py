"""Selection policies on hand-made E-step records."""

import pytest

from teacher.selection import select


def rec(context, sample, reward, valid=True):
    return {"context": context, "sample": sample, "reward": reward, "valid": valid}


RECORDS = [
    rec("a", 0, 0.2), rec("a", 1, 0.5), rec("a", 2, 0.5), rec("a", 3, -0.1),   # a tie at the top
    rec("b", 0, -0.3), rec("b", 1, -0.1), rec("b", 2, 0.0),                     # nothing beats the baseline
    rec("c", 0, 0.9, valid=False), rec("c", 1, 0.1), rec("c", 2, 0.3),          # the best one is invalid
]


def picked(selection):
    return [(x["context"], x["sample"]) for x in selection.chosen]


def test_best_of_k_breaks_ties_by_sample_and_reports_them():
    sel = select(RECORDS, "best_of_k")
    assert picked(sel) == [("a", 1), ("c", 2)]
    assert sel.ties == [{"context": "a", "reward": 0.5, "samples": [1, 2], "kept": [1]}]
    assert sel.contexts_without_pick == ["b"]


def test_best_of_k_without_baseline_filter_keeps_negative_contexts():
    sel = select(RECORDS, "best_of_k", must_beat_baseline=False)
    assert picked(sel) == [("a", 1), ("b", 2), ("c", 2)]


def test_all_positive():
    sel = select(RECORDS, "all_positive")
    assert picked(sel) == [("a", 1), ("a", 2), ("a", 0), ("c", 2), ("c", 1)]
    assert sel.contexts_without_pick == ["b"]


def test_top_k_caps_per_context():
    sel = select(RECORDS, "top_k", cap=2)
    assert picked(sel) == [("a", 1), ("a", 2), ("c", 2), ("c", 1)]
    sel = select(RECORDS, "top_k", cap=2, must_beat_baseline=False)
    assert picked(sel) == [("a", 1), ("a", 2), ("b", 2), ("b", 1), ("c", 2), ("c", 1)]
    # the cap cuts through a tie: reported
    sel = select([rec("x", 0, 0.4), rec("x", 1, 0.4), rec("x", 2, 0.4)], "top_k", cap=2)
    assert picked(sel) == [("x", 0), ("x", 1)] and sel.ties[0]["samples"] == [0, 1, 2]


def test_all_negative_and_empty_inputs():
    sel = select([rec("z", 0, -1.0), rec("z", 1, -0.5)], "best_of_k")
    assert sel.chosen == [] and sel.contexts_without_pick == ["z"]
    assert select([], "all_positive").chosen == []


def test_order_of_records_does_not_change_the_choice():
    assert picked(select(list(reversed(RECORDS)), "best_of_k")) == [("c", 2), ("a", 1)]
    assert {(c, s) for c, s in picked(select(list(reversed(RECORDS)), "best_of_k"))} == {("a", 1), ("c", 2)}


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown selection policy"):
        select(RECORDS, "best_of_all")
