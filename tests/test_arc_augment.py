import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.tasks.arc.augment import (
    GEOMETRIC_NAMES,
    GROUP_NAMES,
    AugmentConfig,
    Chain,
    ColorPermutation,
    Geometric,
    NotInvertibleError,
    PermuteExamples,
    Repeat,
    Upscale,
    build_training_tasks,
    dedupe,
    group_transforms,
    leave_k_out,
    task_key,
    transforms_for,
    voting_transforms,
)
from pipeline.tasks.arc.data import ArcExample, ArcTask, grid_problem

# Local settings, not a loaded profile, so other test modules keep theirs.
PROPERTY = settings(deadline=None, max_examples=60)


@st.composite
def grids(draw, max_side=12):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    return tuple(tuple(draw(st.lists(st.integers(0, 9), min_size=w, max_size=w))) for _ in range(h))


@st.composite
def tasks(draw, min_demos=1, max_demos=5, max_side=8):
    n = draw(st.integers(min_demos, max_demos))
    train = tuple(ArcExample(draw(grids(max_side)), draw(grids(max_side))) for _ in range(n))
    return ArcTask("t", train, (draw(grids(max_side)),), (draw(grids(max_side)),))


def _all_invertible():
    out = [Geometric(n) for n in GEOMETRIC_NAMES]
    out += [Upscale(f, a) for f in (2, 3) for a in ("both", "height", "width")]
    out += [Repeat(f, a) for f in (2, 3) for a in ("both", "height", "width")]
    out += [t for g in GROUP_NAMES for t in group_transforms(g)]
    out += [Chain(Geometric("rot90"), Repeat(2, "width"), Upscale(2, "height"))]
    out += [ColorPermutation.random(random.Random(s), keep_zero=s % 2 == 0) for s in range(4)]
    out += [PermuteExamples([2, 0, 1])]
    return out


INVERTIBLE = _all_invertible()
BIJECTIONS = [t for t in INVERTIBLE if isinstance(t, (Geometric, ColorPermutation))]


@pytest.mark.parametrize("transform", INVERTIBLE, ids=lambda t: t.name)
@given(grid=grids())
@PROPERTY
def test_inverse_after_apply_is_identity(transform, grid):
    assert transform.invertible
    assert transform.inverse(transform.apply(grid)) == grid


@pytest.mark.parametrize("transform", BIJECTIONS, ids=lambda t: t.name)
@given(grid=grids())
@PROPERTY
def test_bijections_apply_after_inverse_is_identity(transform, grid):
    assert transform.apply(transform.inverse(grid)) == grid


G = ((1, 2, 3), (4, 5, 6))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("identity", G),
        ("rot90", ((4, 1), (5, 2), (6, 3))),  # clockwise
        ("rot180", ((6, 5, 4), (3, 2, 1))),
        ("rot270", ((3, 6), (2, 5), (1, 4))),
        ("flip_horizontal", ((3, 2, 1), (6, 5, 4))),
        ("flip_vertical", ((4, 5, 6), (1, 2, 3))),
        ("transpose", ((1, 4), (2, 5), (3, 6))),
        ("anti_transpose", ((6, 3), (5, 2), (4, 1))),
    ],
)
def test_geometric_examples(name, expected):
    assert Geometric(name).apply(G) == expected


@given(grid=grids())
@PROPERTY
def test_the_eight_symmetries_are_distinct_group_elements(grid):
    rot = Geometric("rot90")
    assert rot.apply(rot.apply(rot.apply(rot.apply(grid)))) == grid
    for name in ("flip_horizontal", "flip_vertical", "transpose", "anti_transpose", "rot180"):
        t = Geometric(name)
        assert t.apply(t.apply(grid)) == grid


def test_size_and_tiling_examples():
    g = ((1, 2),)
    assert Upscale(2, "both").apply(g) == ((1, 1, 2, 2), (1, 1, 2, 2))
    assert Upscale(2, "height").apply(g) == ((1, 2), (1, 2))
    assert Upscale(3, "width").apply(g) == ((1, 1, 1, 2, 2, 2),)
    assert Repeat(2, "width").apply(g) == ((1, 2, 1, 2),)
    assert Repeat(2, "both").apply(g) == ((1, 2, 1, 2), (1, 2, 1, 2))
    assert Chain(Geometric("rot90"), Upscale(2)).apply(g) == ((1, 1), (1, 1), (2, 2), (2, 2))


@pytest.mark.parametrize(
    "transform, grid, reason",
    [
        (Upscale(2), ((1, 1, 2),), "not divisible"),
        (Upscale(2), ((1, 1), (1, 2)), "not uniform"),
        (Upscale(2, "width"), ((1, 2),), "not uniform"),
        (Repeat(2, "height"), ((1,), (2,)), "tiles differ"),
        (Repeat(2, "width"), ((1, 2, 3),), "not divisible"),
        (Chain(Geometric("rot90"), Upscale(2)), ((1, 2), (3, 4)), "not uniform"),
    ],
)
def test_inverse_rejects_grids_outside_the_image(transform, grid, reason):
    with pytest.raises(NotInvertibleError, match=reason):
        transform.inverse(grid)


def test_constructor_validation():
    for make in (lambda: Geometric("spin"), lambda: Upscale(1), lambda: Repeat(2, "depth"),
                 lambda: ColorPermutation([1, 2]), lambda: PermuteExamples([0, 0]), lambda: Chain()):
        with pytest.raises(ValueError):
            make()


def test_color_permutation_keeps_background_by_default():
    for seed in range(20):
        assert ColorPermutation.random(random.Random(seed)).mapping[0] == 0
    moved = {ColorPermutation.random(random.Random(s), keep_zero=False).mapping[0] for s in range(50)}
    assert len(moved) > 1
    assert ColorPermutation.random(random.Random(3)) == ColorPermutation.random(random.Random(3))


def test_permute_examples_reorders_demonstrations_only():
    train = tuple(ArcExample(((i,),), ((i + 1,),)) for i in range(3))
    task = ArcTask("t", train, (((9,),),), (((8,),),))
    out = PermuteExamples([2, 0, 1]).apply_task(task)
    assert [ex.input for ex in out.train] == [((2,),), ((0,),), ((1,),)]
    assert out.test_inputs == task.test_inputs and out.test_outputs == task.test_outputs
    with pytest.raises(ValueError, match="needs 2 demonstrations"):
        PermuteExamples([1, 0]).apply_task(task)


def test_apply_task_maps_every_grid():
    task = ArcTask("t", (ArcExample(((1, 2),), ((3,),)),), (((4, 5),),), (((6, 7),),))
    out = Geometric("transpose").apply_task(task)
    assert out.train[0] == ArcExample(((1,), (2,)), ((3,),))
    assert out.test_inputs == (((4,), (5,)),) and out.test_outputs == (((6,), (7,)),)
    assert Upscale(2).apply_task(ArcTask("u", task.train, task.test_inputs)).test_outputs is None


def test_groups():
    assert [len(group_transforms(g)) for g in GROUP_NAMES] == [7, 3, 7, 3]
    assert len(transforms_for(["basic", "basic", "size"])) == 10
    assert transforms_for([]) == []
    with pytest.raises(ValueError, match="unknown augmentation group 'colour'"):
        group_transforms("colour")
    vt = voting_transforms()
    assert vt[0].name == "identity" and len(vt) == 8 and len(set(vt)) == 8


# ------------------------------------------------------------------------------------ leave-k-out


@given(task=tasks(min_demos=1, max_demos=6))
@PROPERTY
def test_leave_one_out_sizes(task):
    n = len(task.train)
    loo = leave_k_out(task, 1)
    assert len(loo) == (n if n >= 2 else 0)
    for i, t in enumerate(loo):
        assert len(t.train) == n - 1
        assert (t.test_inputs[0], t.test_outputs[0]) == (task.train[i].input, task.train[i].output)
        assert t.train == task.train[:i] + task.train[i + 1:]


@given(task=tasks(min_demos=1, max_demos=6))
@PROPERTY
def test_leave_two_out_sizes(task):
    n = len(task.train)
    l2o = leave_k_out(task, 2)
    assert len(l2o) == (n * (n - 1) if n >= 3 else 0)
    assert all(len(t.train) == n - 2 and len(t.test_inputs) == 1 for t in l2o)
    assert len({t.id for t in l2o}) == len(l2o)


def test_leave_out_never_uses_the_real_test_pair():
    task = ArcTask("t", tuple(ArcExample(((i,),), ((i,),)) for i in range(3)), (((7,),),), (((8,),),))
    for t in leave_k_out(task, 1) + leave_k_out(task, 2):
        assert ((7,),) not in t.all_grids() and ((8,),) not in t.all_grids()


# ------------------------------------------------------------------------------------ building


@given(task=tasks(min_demos=2, max_demos=4, max_side=16), seed=st.integers(0, 2**16))
@settings(deadline=None, max_examples=25)
def test_built_tasks_keep_grids_valid(task, seed):
    cfg = AugmentConfig(leave_two_out=True, color_permutations=1)
    for t in build_training_tasks(task, GROUP_NAMES, seed, cfg):
        assert len(t.test_inputs) == len(t.test_outputs) == 1
        for g in t.all_grids():
            assert grid_problem(g) is None


def test_oversized_augmentations_are_dropped():
    big = tuple(tuple((r + c) % 10 for c in range(20)) for r in range(12))
    task = ArcTask("big", (ArcExample(big, big), ArcExample(big, big[::-1])), (big,), (big,))
    out = build_training_tasks(task, GROUP_NAMES, seed=0, config=AugmentConfig(shuffle_examples=False))
    names = {t.id.split("|")[1] for t in out}
    # 12x20 may double in height (24) but not in width (40), and no chain doubles both sides.
    assert "upscale2_height" in names and "repeat2_height" in names
    assert not {"upscale2_both", "upscale2_width", "repeat2_width", "repeat2_both"} & names
    assert not any(n.endswith("upscale2_both") for n in names)
    assert all(len(g) <= 30 and len(g[0]) <= 30 for t in out for g in t.all_grids())


def test_dedupe_symmetric_tasks():
    flat = ((5, 5), (5, 5))
    task = ArcTask("s", (ArcExample(flat, flat),) * 3, (flat,), (flat,))
    out = build_training_tasks(task, ["basic"], seed=0)
    # All demos and all symmetries give the same task: one survives.
    assert len(out) == 1
    assert len(dedupe([task, task, Geometric("rot90").apply_task(task)])) == 1


def test_dedupe_keeps_first_and_order():
    a = ArcTask("a", (ArcExample(((1,),), ((1,),)),), (((2,),),), (((2,),),))
    b = ArcTask("b", (ArcExample(((3,),), ((3,),)),), (((2,),),), (((2,),),))
    a2 = ArcTask("a2", a.train, a.test_inputs, a.test_outputs)
    assert [t.id for t in dedupe([a, b, a2])] == ["a", "b"]
    assert task_key(a) == task_key(a2)
    two = ArcTask("2", a.train + b.train, a.test_inputs, a.test_outputs)
    swapped = ArcTask("s", b.train + a.train, a.test_inputs, a.test_outputs)
    assert [t.id for t in dedupe([two, swapped])] == ["2"]


def _demo_task(n=4, seed=0):
    rng = random.Random(seed)

    def grid(h, w):
        return tuple(tuple(rng.randrange(10) for _ in range(w)) for _ in range(h))

    return ArcTask("d", tuple(ArcExample(grid(3, 4), grid(4, 3)) for _ in range(n)), (grid(3, 4),), None)


def test_counts_without_cap():
    task = _demo_task(4)
    out = build_training_tasks(task, GROUP_NAMES, seed=0)
    assert len(out) == 4 * (1 + 20)
    out = build_training_tasks(task, GROUP_NAMES, seed=0, config=AugmentConfig(leave_two_out=True, color_permutations=2))
    assert len(out) == (4 + 12) * 21 * 3
    assert len({task_key(t) for t in out}) == len(out)


def test_cap_keeps_originals_first():
    task = _demo_task(4)
    out = build_training_tasks(task, GROUP_NAMES, seed=1, config=AugmentConfig(max_tasks=10))
    assert len(out) == 10
    assert [t.id.split("|")[1] for t in out[:4]] == ["identity"] * 4
    assert all(t.id.split("|")[1] != "identity" for t in out[4:])
    small = build_training_tasks(task, GROUP_NAMES, seed=1, config=AugmentConfig(max_tasks=3))
    assert len(small) == 3 and all(t.id.endswith("|identity") for t in small)
    with pytest.raises(ValueError):
        AugmentConfig(max_tasks=0)


def test_no_groups_gives_leave_one_out_only():
    task = _demo_task(3)
    out = build_training_tasks(task, [], seed=0, config=AugmentConfig(shuffle_examples=False))
    assert [(t.train, t.test_inputs) for t in out] == [(t.train, t.test_inputs) for t in leave_k_out(task)]
    assert build_training_tasks(_demo_task(1), GROUP_NAMES, seed=0) == []


def test_seeded_determinism():
    task = _demo_task(5)
    cfg = AugmentConfig(leave_two_out=True, color_permutations=1, max_tasks=200)
    a = build_training_tasks(task, GROUP_NAMES, seed=7, config=cfg)
    b = build_training_tasks(task, GROUP_NAMES, seed=7, config=cfg)
    c = build_training_tasks(task, GROUP_NAMES, seed=8, config=cfg)
    assert a == b
    assert a != c


def test_shuffle_examples_changes_order_not_content():
    task = _demo_task(5)
    plain = build_training_tasks(task, ["basic"], seed=3, config=AugmentConfig(shuffle_examples=False))
    shuffled = build_training_tasks(task, ["basic"], seed=3)
    assert len(plain) == len(shuffled)
    assert any(p.train != s.train for p, s in zip(plain, shuffled))
    for p, s in zip(plain, shuffled):
        assert sorted(p.train, key=repr) == sorted(s.train, key=repr)
        assert p.test_inputs == s.test_inputs
