"""Per-example metrics and their torchmetrics aggregates: properties and hand cases."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dataclasses import asdict

from finediff import names
from finediff.metrics import (argmax_disagreement, dataset_means, example_metrics, first_divergence, kl_per_position,
                              vocab_jaccard)
from finediff.records import DivergentRecord

ids = st.lists(st.integers(0, 30), max_size=20)


@given(ids, ids)
def test_jaccard_in_unit_interval_and_symmetric(a, b):
    j = vocab_jaccard(a, b)
    assert 0.0 <= j <= 1.0 and j == vocab_jaccard(b, a)
    assert vocab_jaccard(a, a) == 1.0


@given(ids, ids)
def test_first_divergence(a, b):
    i = first_divergence(a, b)
    if a == b:
        assert i == -1
    else:
        assert 0 <= i <= min(len(a), len(b)) and a[:i] == b[:i]


@settings(deadline=None, max_examples=30)
@given(st.integers(1, 6), st.integers(2, 40), st.integers(0, 10_000))
def test_kl_nonnegative_zero_for_identical_and_rates_bounded(n, v, seed):
    g = torch.Generator().manual_seed(seed)
    lf, lb = torch.randn(n, v, generator=g) * 3, torch.randn(n, v, generator=g) * 3
    kl = kl_per_position(lf, lb)
    assert (kl >= -1e-6).all() and kl_per_position(lf, lf).abs().max() < 1e-5
    m = asdict(example_metrics(kl, argmax_disagreement(lf, lb), [1, 2], [1, 2]))
    assert 0.0 <= m["token_disagreement_rate"] <= 1.0
    assert m["vocab_jaccard_similarity"] == 1.0 and m["disagreement_positions"]["first_divergence"] == -1
    same = asdict(example_metrics(kl_per_position(lf, lf), argmax_disagreement(lf, lf), [3], [3]))
    assert same["kl_divergence"] < 1e-5 and same["token_disagreement_rate"] == 0.0


def test_hand_case():
    lf = torch.tensor([[5.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    lb = torch.tensor([[5.0, 0.0], [5.0, 0.0], [1.0, 1.0]])
    m = asdict(example_metrics(kl_per_position(lf, lb), argmax_disagreement(lf, lb), [7, 8, 9], [7, 5, 9]))
    assert abs(m["token_disagreement_rate"] - 1 / 3) < 1e-6
    assert m["vocab_jaccard_similarity"] == 2 / 4
    assert m["disagreement_positions"] == {"first_divergence": 1, "num_disagreements": 1, "response_length": 3}
    assert m["kl_divergence"] > 0


def test_dataset_means_are_the_record_means():
    def record(k, r, j):
        return DivergentRecord.from_dict({
            "prompt": "p", "generation_1": "a", "generation_2": "b",
            "metrics": {"kl_divergence": k, "token_disagreement_rate": r, "vocab_jaccard_similarity": j,
                        "disagreement_positions": {"first_divergence": 0, "num_disagreements": 1,
                                                   "response_length": 2}}})

    means = dataset_means([record(1.0, 0.5, 0.2), record(3.0, 0.0, 0.4)])
    expected = {names.divergent_key(names.KL_DIVERGENCE): 2.0, names.divergent_key(names.TOKEN_DISAGREEMENT): 0.25,
                names.divergent_key(names.VOCAB_JACCARD): 0.3}
    assert means.keys() == expected.keys()
    assert all(abs(means[k] - v) < 1e-6 for k, v in expected.items())
