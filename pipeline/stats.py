"""Intervals over units (passages, documents, orders, people): percentile bootstrap, seeded so a report reproduces,
and the normal approximation the demo's tables print."""

from __future__ import annotations

import math
import random
import statistics
from typing import Literal


def mean_ci95(values: list[float]) -> dict:
    """The mean with the half-width of a normal-approximation 95% interval (1.96 standard errors; 0 for fewer than two
    values): {"mean", "ci95", "n"}; an empty list gives mean 0."""
    mean = statistics.fmean(values) if values else 0.0
    ci = 1.96 * statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return {"mean": mean, "ci95": ci, "n": len(values)}


def bootstrap_mean(values: list[float], *, resamples: int = 10_000, seed: int = 0) -> dict:
    """The mean with a percentile 95% bootstrap interval over the units (orders, passages)."""
    if not values:
        raise ValueError("bootstrap_mean needs at least one value")
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(values) for _ in values) / len(values) for _ in range(resamples))
    return {"mean": sum(values) / len(values), "low": means[int(0.025 * resamples)],
            "high": means[int(0.975 * resamples) - 1], "n": len(values)}


def paired_bootstrap(a: list[float], b: list[float], *, resamples: int = 10_000, seed: int = 0) -> dict:
    """Mean of a - b over paired units with a percentile 95% bootstrap interval."""
    if len(a) != len(b) or not a:
        raise ValueError("paired_bootstrap needs two equal-length, non-empty lists")
    return bootstrap_mean([x - y for x, y in zip(a, b)], resamples=resamples, seed=seed)


def ratio_bootstrap(num: list[float], den: list[float], *, resamples: int = 10_000, seed: int = 0,
                    undefined: Literal["drop", "inf"] = "drop") -> dict:
    """sum(num) / sum(den) over paired units, with a percentile 95% interval from resampling the units together
    (a ratio of macro averages, or a pooled share when the units hold counts). None where the denominator is 0.

    `undefined`: what a resample whose denominator sums to 0 counts as. drop: it is left out (the interval is over
    the resamples where the ratio exists). inf: an infinite ratio, above every other, so that it can only widen the
    upper end; an infinite mean or bound is reported as None, and no units at all give None throughout (the demo's
    trained / raw-document accuracy)."""
    if len(num) != len(den) or (not num and undefined == "drop"):
        raise ValueError("ratio_bootstrap needs two equal-length, non-empty lists")

    def ratio(idx):
        d = sum(den[i] for i in idx)
        return sum(num[i] for i in idx) / d if d else None

    n = len(num)
    rng = random.Random(seed)
    drawn = [ratio([rng.randrange(n) for _ in range(n)]) for _ in range(resamples)] if n else []
    if undefined == "inf":
        ranked = sorted(math.inf if r is None else r for r in drawn) or [math.inf]
        bounds = ranked[int(0.025 * len(ranked))], ranked[int(0.975 * len(ranked)) - 1]
        mean = (ratio(range(n)) if n else None, *bounds)
        return {**{k: None if x is None or math.isinf(x) else x for k, x in zip(("mean", "low", "high"), mean)}, "n": n}
    draws = sorted(r for r in drawn if r is not None)
    value = ratio(range(n))
    if value is None or not draws:
        return {"mean": None, "low": None, "high": None, "n": n}
    return {"mean": value, "low": draws[int(0.025 * len(draws))], "high": draws[int(0.975 * len(draws)) - 1], "n": n}
