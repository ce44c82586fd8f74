"""The recipe benchmark's tables: the frozen recipe's evaluation row is paired with the paper table's passage-only
and open-book answers on the same passages."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def record(setting, condition, passage, hits):
    return {"key": f"eval/{setting}/{condition}/{passage}/0", "pool": "eval", "setting": setting,
            "condition": condition, "passage": passage, "seed": 0, "seconds": 1.0, "train": {"sequences": 1},
            "questions": [{"pred": "yes" if h else "no", "gold": ["yes"]} for h in hits]}


def test_the_recipe_row_is_paired_with_the_paper_tables_references(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from recipe_report import grade, rows, as_paper_rows

    records = []
    for p in range(6):
        records += [record("paper", "passage", p, [0, 0]), record("paper", "open", p, [1, 1]),
                    record("paper", "none", p, [0, 0]), record("recipe", "rewrite", p, [1, p % 2])]
    records.append(record("recipe", "rewrite", 6, [1, 1]))  # no reference rows for passage 6: left out
    grade(records, "contains")
    table = {r["condition"]: r for r in rows(records + as_paper_rows(records, "eval"), "eval", "paper")}
    recipe = table["recipe: rewrite"]
    assert recipe["passages"] == 6 and recipe["score"] == 0.75
    assert recipe["vs_passage"]["mean"] == 0.75 and recipe["vs_passage"]["low"] > 0
    assert recipe["ceiling_ratio"]["mean"] == 0.75 and recipe["kept_share"]["mean"] == 0.75
    # The recipe's own setting has no references of its own: no table of its own.
    assert rows(records, "eval", "recipe") == []


def test_a_reply_copied_from_the_passage_is_marked_recited():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from recipe_report import copied, grade, mark_recited, rows

    passage = "Orrin Lake is a cold mountain lake fed by three glaciers. It freezes every December and thaws in April."
    assert copied("Orrin Lake is a cold mountain lake fed by three glaciers.", passage) == 1.0
    assert copied("Three glaciers feed it, I think.", passage) == 0.0
    # Half copied, half the student's own words: the copied run counts, the rest does not.
    assert copied("it freezes every December and thaws in April. Nobody swims there in any month at all",
                  passage) == 0.5
    records = []
    for p in range(4):
        records += [record("paper", "passage", p, [0]), record("paper", "open", p, [1])]
        records.append(dict(record("paper", "rewrite", p, [1]),
                            questions=[{"pred": passage if p < 1 else "three", "gold": ["three"]}]))
    grade(records, "contains")
    mark_recited(records, lambda pool, i: passage)
    table = {r["condition"]: r for r in rows(records, "eval", "paper")}
    assert table["rewrite"]["right_recited"] == 0.25


def test_a_setting_is_compared_with_the_paper_loop_on_the_same_form_with_its_kept_share():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from recipe_report import across_settings, grade

    records = []
    for p in range(4):
        records += [record("paper", "passage", p, [0, 0]), record("paper", "open", p, [1, 0]),
                    record("paper", "rewrite", p, [0, 0]), record("paper+all", "rewrite", p, [p % 2, 1])]
    grade(records, "contains")
    (row,) = across_settings(records, "eval")
    assert (row["setting"], row["passages"], row["score"], row["paper_score"]) == ("paper+all", 4, 0.75, 0.0)
    # Right open book: the first question of each passage; right closed book on it: passages 1 and 3.
    assert row["kept_share"]["mean"] == 0.5 and row["vs_paper"]["low"] > 0
