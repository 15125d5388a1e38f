"""Per-example divergence metrics of a generation pair, and torchmetrics aggregates.

Definitions (both models teacher-forced on the same text: the prompt followed by the
finetuned model's generation, ``generation_2``):

* ``kl_divergence``: mean over the response positions of KL(p_ft || p_base) of the
  next-token distributions (nats per token);
* ``token_disagreement_rate``: share of response positions where the two models'
  argmax next tokens differ;
* ``vocab_jaccard_similarity``: |A ∩ B| / |A ∪ B| of the token-id sets of the two
  generations (1.0 when both are empty);
* ``disagreement_positions``: ``first_divergence`` (first index where the two generated
  token sequences differ; their common length if one is a prefix of the other, ``-1``
  if identical), ``num_disagreements`` (positions counted in the disagreement rate) and
  ``response_length`` (tokens of ``generation_2``).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from finediff.divergence import token_divergence


def kl_per_position(logits_ft: torch.Tensor, logits_base: torch.Tensor) -> torch.Tensor:
    """KL(ft||base) at each position: ``[..., V]`` -> ``[...]``."""
    return token_divergence(logits_ft, logits_base, "kl_ft_base")


def argmax_disagreement(logits_ft: torch.Tensor, logits_base: torch.Tensor) -> torch.Tensor:
    """Bool per position: the two models' most likely next tokens differ."""
    return logits_ft.argmax(-1) != logits_base.argmax(-1)


def vocab_jaccard(ids_a: list[int], ids_b: list[int]) -> float:
    """Jaccard similarity of two token-id sets; 1.0 for two empty generations."""
    a, b = set(ids_a), set(ids_b)
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def first_divergence(ids_a: list[int], ids_b: list[int]) -> int:
    """First index where two token sequences differ; -1 if identical."""
    for i, (x, y) in enumerate(zip(ids_a, ids_b)):
        if x != y:
            return i
    return -1 if len(ids_a) == len(ids_b) else min(len(ids_a), len(ids_b))


def example_metrics(kl_R: torch.Tensor, disagree_R: torch.Tensor, gen1_ids: list[int], gen2_ids: list[int]) -> dict:
    """The seed's ``metrics`` dict for one record from per-response-position values."""
    n = int(kl_R.numel())
    return {
        "kl_divergence": float(kl_R.mean()) if n else 0.0,
        "token_disagreement_rate": float(disagree_R.float().mean()) if n else 0.0,
        "vocab_jaccard_similarity": vocab_jaccard(gen1_ids, gen2_ids),
        "disagreement_positions": {
            "first_divergence": first_divergence(gen1_ids, gen2_ids),
            "num_disagreements": int(disagree_R.sum()),
            "response_length": len(gen2_ids),
        },
    }


class _MeanOf(Metric):
    """Mean of a per-example value, summed and counted so it reduces across processes."""

    full_state_update = False
    key = ""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, records: list[dict]) -> None:
        for r in records:
            self.total += float(r["metrics"][self.key])
            self.count += 1

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()


class MeanKLDivergence(_MeanOf):
    """Mean ``kl_divergence`` over records."""

    key = "kl_divergence"


class MeanTokenDisagreement(_MeanOf):
    """Mean ``token_disagreement_rate`` over records."""

    key = "token_disagreement_rate"


class MeanVocabJaccard(_MeanOf):
    """Mean ``vocab_jaccard_similarity`` over records."""

    key = "vocab_jaccard_similarity"


AGGREGATES = {
    "divergent/kl_divergence": MeanKLDivergence,
    "divergent/token_disagreement_rate": MeanTokenDisagreement,
    "divergent/vocab_jaccard_similarity": MeanVocabJaccard,
}
