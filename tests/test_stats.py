"""The claims' tests are calibrated on clustered data, and the simulation can catch a test that
is not: pooling every answer as independent, as a McNemar test on answer pairs does, rejects
far too often on the same data."""

import numpy as np
import pytest
from scipy.stats import binomtest

from finediff.stats import (ALPHA_SHARES, alpha_share, holm, independent_test, mean_interval, paired_test,
                            per_prompt)

CLAIMS = 2000
ALPHA = 0.05


def answers(rates: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` answers per prompt, each showing the behaviour with its prompt's rate."""
    return rng.random((len(rates), k)) < rates[:, None]


def clustered_pair(rng: np.random.Generator, n: int, k: int, shift: float = 0.0):
    """One claim's data: per prompt, two rates drawn from a U-shaped Beta (a strong per-prompt
    effect: most prompts almost never or almost always show it), one per model in a random
    order, so the models differ on every prompt but neither more often than the other; with
    ``shift`` the finetuned model's rate rises by that many logits (a planted effect)."""
    a, b = rng.beta(0.3, 0.7, n), rng.beta(0.3, 0.7, n)
    swap = rng.random(n) < 0.5
    ft, base = np.where(swap, a, b), np.where(swap, b, a)
    if shift:
        logit = np.log(np.clip(ft, 1e-6, 1 - 1e-6) / np.clip(1 - ft, 1e-6, 1))
        ft = 1 / (1 + np.exp(-(logit + shift)))
    return answers(ft, k, rng), answers(base, k, rng)


def pooled_mcnemar(ft: np.ndarray, base: np.ndarray) -> float:
    """Every answer pair counted as independent: what the audit did before the prompt became the unit."""
    up = int((ft & ~base).sum())
    down = int((base & ~ft).sum())
    return binomtest(up, up + down, 0.5, alternative="greater").pvalue if up + down else 1.0


def prompt_paired(ft: np.ndarray, base: np.ndarray) -> float:
    return paired_test(ft.mean(1).tolist(), base.mean(1).tolist())


@pytest.mark.parametrize("n,k", [(24, 4), (16, 2)])  # the findings' and the conditions' test sizes
def test_paired_test_is_calibrated_and_pooling_is_not(n, k):
    rng = np.random.default_rng(0)
    data = [clustered_pair(rng, n, k) for _ in range(CLAIMS)]
    ours = np.mean([prompt_paired(ft, base) <= ALPHA for ft, base in data])
    pooled = np.mean([pooled_mcnemar(ft, base) <= ALPHA for ft, base in data])
    print(f"null, {n} prompts x {k} answers: rejection rate {ours:.3f} by prompt, {pooled:.3f} pooled")
    assert ours <= 0.06
    assert pooled > 0.06  # the same bar fails a test that counts every answer as independent


def test_paired_test_power_on_a_planted_effect():
    rng = np.random.default_rng(1)
    data = [clustered_pair(rng, 24, 4, shift=3.0) for _ in range(CLAIMS // 4)]
    power = np.mean([prompt_paired(ft, base) <= ALPHA for ft, base in data])
    print(f"planted effect (+3 logits on every prompt), 24 prompts x 4 answers: power {power:.2f}")
    assert power >= 0.5


def test_independent_test_is_calibrated():
    """Arms asked different prompts (a group's prompts against the others'): per-prompt rates
    from the same U-shaped Beta in both arms."""
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(CLAIMS):
        x = answers(rng.beta(0.3, 0.7, 6), 2, rng).mean(1)
        y = answers(rng.beta(0.3, 0.7, 16), 2, rng).mean(1)
        hits += independent_test(x, y, seed=int(rng.integers(1 << 30))) <= ALPHA
    print(f"null, 6 against 16 prompts x 2 answers: rejection rate {hits / CLAIMS:.3f}")
    assert hits / CLAIMS <= 0.06
    x = answers(np.full(6, 0.9), 2, rng).mean(1)
    y = answers(np.full(16, 0.05), 2, rng).mean(1)
    assert independent_test(x, y) < 0.01


def test_per_prompt_shares_and_one_budget():
    assert per_prompt([True, False, True, True], ["a", "a", "b", "b"]) == {"a": 0.5, "b": 1.0}
    assert abs(sum(ALPHA_SHARES.values()) - 1) < 1e-12 and alpha_share(0.05, "findings") == 0.05 * ALPHA_SHARES["findings"]
    assert holm([0.01, 0.04, 0.5]) == pytest.approx([0.03, 0.08, 0.5])
    assert paired_test([1, 1, 0.5], [0, 0, 0.5]) == pytest.approx(0.25)  # the tied prompt carries nothing
    assert paired_test([0.2] * 5, [0.2] * 5) == 1.0


def test_kl_interval_never_below_zero():
    values = [0.9274, 0.0, 0.0, 0.001, 0.002, 0.0, 0.0, 0.0, 0.003, 0.0]  # one prompt carries the mean
    mean, low, high, _ = mean_interval(values)
    assert 0 <= low <= mean <= high <= max(values)
    assert mean_interval([0.3]) == (0.3, 0.3, 0.3, 0.0)


def test_one_seed_and_a_drawn_one_for_null():
    import random

    from finediff.pipeline.settings import run_seed

    assert run_seed(7) == 7
    a = random.random()
    run_seed(7)
    assert random.random() == a  # the same seed, the same draws
    drawn = run_seed(None)
    assert isinstance(drawn, int) and 0 <= drawn < 2 ** 31
