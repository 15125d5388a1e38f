"""The statistics finediff reports, from the libraries that keep them: Holm's correction
(statsmodels), exact tests (scipy, at their call sites) and a mean's 95% interval."""

from __future__ import annotations

import math

from scipy.stats import norm
from statsmodels.stats.multitest import multipletests


def holm(p: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order of ``p``."""
    if not p:
        return []
    return [float(x) for x in multipletests(p, method="holm")[1]]


def mean_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """``(mean, low, high, sd)``: the mean with its normal-approximation interval (mean +/-
    z * sd / sqrt(n)); with one value the interval is the value itself."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    if n < 2 or sd == 0:
        return mean, mean, mean, sd
    low, high = norm.interval(level, loc=mean, scale=sd / math.sqrt(n))
    return mean, float(low), float(high), sd
