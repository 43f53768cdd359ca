"""Percentile-bootstrap confidence intervals: of one mean (over seeds, over crystals) and of the
difference of two independent means (fine-tuned minus base model)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def _resampled_means(x: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    return x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)


def bootstrap_ci(
    values: Sequence[float | None], resamples: int = BOOTSTRAP_RESAMPLES, level: float = CI_LEVEL, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap confidence interval of the mean: ``resamples`` resamplings of
    the values with replacement, the ``(1 ± level) / 2`` quantiles of their means. Missing or
    non-finite values are left out; none left: NaNs."""
    x = _finite(values)
    if not len(x):
        return math.nan, math.nan, math.nan
    means = _resampled_means(x, resamples, np.random.default_rng(seed))
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(x.mean()), float(low), float(high)


def bootstrap_difference_ci(
    a: Sequence[float | None],
    b: Sequence[float | None],
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``mean(b) - mean(a)`` and its percentile-bootstrap confidence interval, the two samples
    resampled independently (two models' samples: nothing pairs crystal i of one with crystal i of
    the other). Missing or non-finite values are left out; either sample empty: NaNs."""
    x, y = _finite(a), _finite(b)
    if not len(x) or not len(y):
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    diffs = _resampled_means(y, resamples, rng) - _resampled_means(x, resamples, rng)
    low, high = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return float(y.mean() - x.mean()), float(low), float(high)
