"""The real-teacher benchmark's table (benchmarks/teacher_report.py): the evaluation run's rows, then the teachers',
each teacher paired against (b), (w) and (c) on the passages both rows hold. Reading a real run folder is checked
where tests/test_warm_start.py trains one."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _line(text: str, label: str) -> list[str]:
    [line] = [x for x in text.splitlines() if x.startswith(f"| {label} |")]
    return [c.strip() for c in line.strip("|").split("|")]


def test_rows_come_in_the_benchmarks_order_and_pair_only_shared_passages():
    from teacher_report import table

    rows = {"r1": {0: 1.0, 1: 1.0, 2: 0.5, 3: 1.0}, "open": {p: 1.0 for p in range(4)},
            "passage": {p: 0.0 for p in range(4)}, "w": {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.5},
            "implications": {0: 1.0, 1: 0.0}, "e": {0: 0.0, 1: 0.5}}
    text = table(rows, {"r1": {"sample_median_s": 55.2, "absorb_median_s": 301.4}})
    labels = [x.split("|")[1].strip() for x in text.splitlines()[2:]]
    assert labels == ["(b) passage only", "(c) implications (7B base)", "open book (the ceiling)",
                      "(e) SmolLM2 base teacher", "(w) after the warm start", "(r1) after ReST-EM round 1"]
    r1 = _line(text, "(r1) after ReST-EM round 1")
    assert r1[1:3] == ["4", "0.875"]
    assert r1[3].startswith("+0.875 [")  # vs (b), all 4 passages: no count
    assert r1[4].startswith("+0.375 [") and "(n=" not in r1[4]
    assert r1[5].startswith("+0.500 [") and r1[5].endswith("(n=2)")  # (c) holds passages 0 and 1 only
    assert r1[6].startswith("0.88 [") and r1[7:] == ["—", "—", "55 + 301"]  # no replies given: no kept share
    b = _line(text, "(b) passage only")
    assert b[3:6] == ["—", "—", "—"]  # an evaluation row is compared with (b) only, and not with itself
    assert _line(text, "(w) after the warm start")[4] == "—"


def test_kept_share_matches_questions_by_text_and_recited_replies_copy_the_passage():
    from teacher_report import kept_and_recited

    passage = "the quick brown fox jumps over the lazy dog near the river bank today"

    def q(text, score, pred="no"):
        return {"question": text, "score": score, "pred": pred}

    ceiling = {0: [q("a", 1), q("b", 1), q("c", 0)], 1: [q("d", 1), q("e", 0)]}
    recited = "the quick brown fox jumps over the lazy dog"  # 9 words, all in one 8-word run of the passage
    # the row's replies in another question order: matched by text, not position
    replies = {0: [q("c", 1, "yes"), q("b", 1, recited), q("a", 0)], 1: [q("e", 0), q("d", 1, "a fox")]}
    kept, share = kept_and_recited(replies, ceiling, {0: passage, 1: passage})
    assert kept["mean"] == 2 / 3  # right open book: a, b, d; closed book also: b, d
    assert share == 1 / 3  # right replies: c, b, d; only b recites the passage
    assert kept_and_recited({}, ceiling, {0: passage}) == (None, None)
