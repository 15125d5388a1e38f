"""The statistics behind every claim finediff makes, from the libraries that keep them.

* **The prompt is the unit.** Answers to one prompt are correlated, so a claim is tested on
  per-prompt outcomes: the share of each prompt's answers that show a behaviour.
  :func:`paired_test` compares two arms asked the same prompts (the exact sign test on the
  prompts where they differ); :func:`independent_test` compares arms asked different prompts
  (a permutation test of the prompts between the arms).
* **One error budget per audit.** ``evidence.alpha`` is split between the three steps that
  make claims, in the fixed shares :data:`ALPHA_SHARES`, and Holm's correction runs within
  each step at its share (:func:`holm`). The steps run in order, and each step's family of
  candidates is fixed before its test answers are sampled, so the audit's family-wise error
  rate is at most the sum of the shares: ``evidence.alpha``.
* **Intervals respect the quantity.** A mean divergence gets a percentile bootstrap interval
  (``scipy.stats.bootstrap``), which stays inside the values' range: never below zero for a KL.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from statsmodels.stats.multitest import multipletests

ALPHA_SHARES = {"groups": 0.2, "findings": 0.4, "conditions": 0.4}
"""Each claim-making step's share of ``evidence.alpha``: the survey's groups (where the
divergence concentrates), the findings (behaviours on fresh prompts) and the conditions
(what turns a behaviour on). They sum to 1."""
RESAMPLES = 4999
"""Random splits of a permutation test that cannot enumerate them all."""
BOOTSTRAP_RESAMPLES = 4999
"""Resamples of a bootstrap interval."""


def alpha_share(alpha: float, step: str) -> float:
    """The error budget of one step (``groups``, ``findings`` or ``conditions``)."""
    return alpha * ALPHA_SHARES[step]


def holm(p: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order of ``p``."""
    if not len(p):
        return []
    return [float(x) for x in multipletests(list(p), method="holm")[1]]


def per_prompt(hits: Sequence[bool], prompts: Sequence[str]) -> dict[str, float]:
    """The share of each prompt's answers that show a behaviour (``hits[i]``: answer ``i``,
    to ``prompts[i]``), in the prompts' first-seen order."""
    counts: dict[str, list[int]] = {}
    for h, p in zip(hits, prompts):
        c = counts.setdefault(p, [0, 0])
        c[0] += bool(h)
        c[1] += 1
    return {p: a / n for p, (a, n) in counts.items()}


def paired_test(claimed: Sequence[float], other: Sequence[float]) -> float:
    """One-sided p-value that ``claimed`` exceeds ``other``, one pair of per-prompt outcomes
    per prompt: the exact sign test (``scipy.stats.binomtest``) on the prompts where the two
    arms differ. Under the null the two arms of a prompt are exchangeable, so each such
    prompt leans either way with probability one half, however correlated its answers are."""
    from scipy.stats import binomtest

    if len(claimed) != len(other):
        raise ValueError(f"paired_test needs one outcome per prompt in each arm, got {len(claimed)} and {len(other)}")
    up = sum(1 for a, b in zip(claimed, other) if a > b)
    down = sum(1 for a, b in zip(claimed, other) if a < b)
    return float(binomtest(up, up + down, 0.5, alternative="greater").pvalue) if up + down else 1.0


def _mean_diff(x, y, axis=-1):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def independent_test(claimed: Sequence[float], other: Sequence[float], seed: Optional[int] = 0) -> float:
    """One-sided p-value that the mean per-prompt outcome of ``claimed`` exceeds ``other``'s,
    the arms asked different prompts: a permutation test of the prompts between the arms
    (``scipy.stats.permutation_test``; exact when every split fits in :data:`RESAMPLES`,
    else that many random splits, seeded). Rank tests' normal approximation is far too
    small at the tail when most outcomes tie at zero, as a behaviour's shares do."""
    from scipy.stats import permutation_test

    x, y = np.asarray(claimed, float), np.asarray(other, float)
    if not x.size or not y.size or np.ptp(np.concatenate([x, y])) == 0:
        return 1.0
    res = permutation_test((x, y), _mean_diff, permutation_type="independent", alternative="greater",
                           n_resamples=RESAMPLES, vectorized=True, rng=seed)
    return float(res.pvalue)


def mean_interval(values: Sequence[float], level: float = 0.95,
                  seed: Optional[int] = 0) -> tuple[float, float, float, float]:
    """``(mean, low, high, sd)``: the mean with its percentile bootstrap interval
    (``scipy.stats.bootstrap``), which never leaves the values' range; with one value, or
    all equal, the interval is the mean itself."""
    from scipy.stats import bootstrap

    v = np.asarray(values, float)
    mean = float(v.mean())
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    if v.size < 2 or sd == 0:
        return mean, mean, mean, sd
    ci = bootstrap((v,), np.mean, confidence_level=level, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                   vectorized=True, rng=seed).confidence_interval
    return mean, float(ci.low), float(ci.high), sd
