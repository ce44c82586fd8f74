"""The intervals of `pipeline.stats`, and that the demo's figures through them are the ones it printed before.

`pipeline/demo.py` had its own normal interval and ratio bootstrap until issue 21; the references below are those
functions as they were (commit 2219995), so a demo rerun after the move prints the very same numbers.
"""

import json
import math
import random
import statistics

import pytest

from pipeline.stats import bootstrap_mean, mean_ci95, ratio_bootstrap


def _old_mean_ci(values):
    mean = statistics.fmean(values) if values else 0.0
    ci = 1.96 * statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return {"mean": mean, "ci95": ci, "n": len(values)}


def _old_ratio_ci(num, den, resamples=2000):
    def ratio(idx):
        d = sum(den[i] for i in idx)
        return sum(num[i] for i in idx) / d if d else math.inf

    n = len(num)
    rng = random.Random(0)
    draws = sorted(ratio([rng.randrange(n) for _ in range(n)]) for _ in range(resamples)) if n else [math.inf]
    low, high = draws[int(0.025 * len(draws))], draws[int(0.975 * len(draws)) - 1]
    finite = [None if math.isinf(x) else x for x in (ratio(range(n)) if n else math.inf, low, high)]
    return dict(zip(("mean", "low", "high"), finite), n=n)


def _cases():
    rng = random.Random(7)
    yield [], []
    yield [0.5], [0.25]
    yield [0.5, 0.5], [0.0, 0.0]
    yield [1.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.0, 0.0]
    for n in (1, 2, 3, 5, 12, 48):
        for zeros in (0.0, 0.3, 0.8):  # accuracies of 0 make some resamples' denominators 0
            num = [rng.choice([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]) for _ in range(n)]
            den = [0.0 if rng.random() < zeros else rng.choice([0.2, 0.4, 1.0]) for _ in range(n)]
            yield num, den


@pytest.mark.parametrize("num, den", list(_cases()))
def test_the_demo_figures_are_those_it_printed_before(num, den):
    from pipeline.demo import _ratio_ci

    assert _ratio_ci(num, den) == _old_ratio_ci(num, den)
    assert list(_ratio_ci(num, den)) == ["mean", "low", "high", "n"]  # report.json's key order
    assert mean_ci95(num) == _old_mean_ci(num)
    json.dumps(_ratio_ci(num, den), allow_nan=False)


def test_resamples_without_a_ratio_are_dropped_or_counted_as_infinite():
    num, den = [1.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.0, 0.0]
    dropped = ratio_bootstrap(num, den, resamples=2000)
    kept = ratio_bootstrap(num, den, resamples=2000, undefined="inf")
    assert dropped["mean"] == kept["mean"] == pytest.approx(2.0)
    assert dropped["high"] is not None and kept["high"] is None and kept["low"] <= dropped["low"]
    assert ratio_bootstrap([], [], undefined="inf") == {"mean": None, "low": None, "high": None, "n": 0}
    with pytest.raises(ValueError):
        ratio_bootstrap([], [])


def test_bootstrap_mean_is_seeded():
    values = [0.1, 0.5, 0.9, 0.3]
    assert bootstrap_mean(values, seed=3) == bootstrap_mean(values, seed=3)
    low, high = bootstrap_mean(values)["low"], bootstrap_mean(values)["high"]
    assert min(values) <= low <= statistics.fmean(values) <= high <= max(values)
