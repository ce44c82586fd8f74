"""Intervals over units (passages, documents, orders): percentile bootstrap, seeded so a report reproduces."""

from __future__ import annotations

import random


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


def ratio_bootstrap(num: list[float], den: list[float], *, resamples: int = 10_000, seed: int = 0) -> dict:
    """sum(num) / sum(den) over paired units, with a percentile 95% interval from resampling the units together
    (a ratio of macro averages, or a pooled share when the units hold counts). None where the denominator is 0."""
    if len(num) != len(den) or not num:
        raise ValueError("ratio_bootstrap needs two equal-length, non-empty lists")

    def ratio(idx):
        d = sum(den[i] for i in idx)
        return sum(num[i] for i in idx) / d if d else None

    n = len(num)
    rng = random.Random(seed)
    draws = sorted(r for r in (ratio([rng.randrange(n) for _ in range(n)]) for _ in range(resamples)) if r is not None)
    value = ratio(range(n))
    if value is None or not draws:
        return {"mean": None, "low": None, "high": None, "n": n}
    return {"mean": value, "low": draws[int(0.025 * len(draws))], "high": draws[int(0.975 * len(draws)) - 1], "n": n}
