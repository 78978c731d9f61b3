"""The statistics of a report: a mean with its t-interval over seeds, and paired differences by seed.

A cell's 95% confidence interval uses the t-distribution with n-1 degrees of freedom; the
difference to the supervised baseline at the same budget pairs runs by seed (same training
subset, same initialisation seed) and is tested with a paired t-test (:func:`scipy.stats.ttest_rel`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

# ----------------------------------------------------------------------------------- math


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): a t-interval over *values*; low/high are NaN for fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class PairedDiff:
    """Mean of paired differences (strategy - baseline) with its t-interval and paired-test p."""

    n: int
    diff: float
    low: float
    high: float
    p: float


def paired_difference(values: Sequence[float], baseline: Sequence[float], confidence: float = 0.95) -> PairedDiff:
    """Paired comparison of equal-length sequences (same seeds in the same order)."""
    x = np.asarray(values, dtype=float)
    b = np.asarray(baseline, dtype=float)
    if x.shape != b.shape:
        raise ValueError("paired_difference needs sequences of equal length")
    n = int(x.size)
    if n < 2:
        return PairedDiff(n, float((x - b).mean()) if n else math.nan, math.nan, math.nan, math.nan)
    diff, low, high = mean_ci(x - b, confidence)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical differences: scipy warns, p is 0 or NaN
        p = float(stats.ttest_rel(x, b).pvalue)
    return PairedDiff(n, diff, low, high, p)
