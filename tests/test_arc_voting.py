import pytest

from pipeline.tasks.arc.augment import Geometric, Repeat, Upscale, voting_transforms
from pipeline.tasks.arc.data import make_submission
from pipeline.tasks.arc.voting import (
    invert_predictions,
    pass_at_2,
    score_submission,
    vote,
    vote_transformed,
)

A = ((1, 2), (3, 4))
B = ((5,),)
C = ((6, 6),)
D = ((7,), (8,))


def test_most_frequent_first():
    assert vote([B, A, A, C, A, C]) == [A, C]


def test_ties_keep_first_appearance():
    assert vote([C, A, A, C, B]) == [C, A]
    assert vote([B, C, D]) == [B, C]
    assert vote([D, C, B], attempts=3) == [D, C, B]


def test_tie_break_does_not_depend_on_grid_content():
    # Same counts, reversed input order: reversed result (no lexicographic or hash-order tie-break).
    assert vote([A, B]) == [A, B]
    assert vote([B, A]) == [B, A]


def test_fewer_candidates_and_junk():
    assert vote([]) == []
    assert vote([None, [[1, 99]], "12", [[1], [2, 3]]]) == []
    assert vote([A, None, A]) == [A]
    assert vote([[[1, 2], [3, 4]], A, B]) == [A, B]  # lists and tuples are the same grid


def test_invert_predictions_maps_back_and_drops_inconsistent():
    truth = ((1, 2, 3), (4, 5, 6))
    pairs = [(t, t.apply(truth)) for t in voting_transforms()]
    assert invert_predictions(pairs) == [truth] * 8
    up = Upscale(2)
    bad = [(up, ((1, 1), (1, 2))), (Repeat(2, "width"), ((1, 2),)), (Geometric("rot90"), None), (up, [[1, 10]])]
    assert invert_predictions(bad) == []
    assert invert_predictions([(up, up.apply(truth))]) == [truth]


def test_vote_transformed_recovers_majority():
    truth = ((1, 0), (0, 0))
    wrong = ((0, 0), (0, 1))
    pairs = []
    for i, t in enumerate(voting_transforms()):
        # The "model" is right under 5 of the 8 views and wrong (consistently) under 3.
        pairs.append((t, t.apply(truth if i % 3 else wrong)))
    assert vote_transformed(pairs) == [truth, wrong]


def test_vote_transformed_identity_wins_ties():
    views = voting_transforms()
    first, second = ((3,),), ((4,),)
    pairs = [(views[0], first), (views[1], views[1].apply(second))]
    assert vote_transformed(pairs) == [first, second]


def test_pass_at_2():
    assert pass_at_2([[A, B]], [B])
    assert pass_at_2([[A]], [[[1, 2], [3, 4]]])
    assert not pass_at_2([[A, B]], [C])
    assert pass_at_2([[A, B], [C]], [A, C])
    assert not pass_at_2([[A, B], [C]], [A, D])  # every test output must be matched
    assert not pass_at_2([[]], [A])
    assert not pass_at_2([], [])


def test_numpy_grids_are_accepted():
    np = pytest.importorskip("numpy")
    assert vote([np.array(A), A, np.array(B)]) == [A, B]
    assert pass_at_2([[np.array(A)]], [np.array([[1, 2], [3, 4]], dtype=np.int64)])


def test_pass_at_2_rejects_misuse():
    with pytest.raises(ValueError, match="at most 2 attempts"):
        pass_at_2([[A, B, C]], [C])
    with pytest.raises(ValueError, match="1 attempt lists for 2 test outputs"):
        pass_at_2([[A]], [A, B])


def test_pass_at_2_on_submission_items():
    sub = make_submission({"t": [[A, B], [C]], "u": [[D]]})
    assert pass_at_2(sub["t"], [B, C])
    scores = score_submission(sub, {"t": [B, C], "u": [A], "missing": [A]})
    assert scores == {"t": True, "u": False, "missing": False}
