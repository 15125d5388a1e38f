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
from torchmetrics import MeanMetric

from finediff import names
from finediff.divergence import token_divergence
from finediff.records import DisagreementPositions, DivergentRecord, RecordMetrics


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


def example_metrics(kl_R: torch.Tensor, disagree_R: torch.Tensor, gen1_ids: list[int],
                    gen2_ids: list[int]) -> RecordMetrics:
    """The seed's ``metrics`` of one record from per-response-position values."""
    n = int(kl_R.numel())
    return RecordMetrics(
        kl_divergence=float(kl_R.mean()) if n else 0.0,
        token_disagreement_rate=float(disagree_R.float().mean()) if n else 0.0,
        vocab_jaccard_similarity=vocab_jaccard(gen1_ids, gen2_ids),
        disagreement_positions=DisagreementPositions(first_divergence(gen1_ids, gen2_ids), int(disagree_R.sum()),
                                                     len(gen2_ids)),
    )


def dataset_means(records: list[DivergentRecord]) -> dict[str, float]:
    """``{divergent/<metric>: mean over records}`` for every per-record metric, with
    ``torchmetrics.MeanMetric`` (which reduces across processes under DDP)."""
    out = {}
    for key in names.RECORD_METRICS:
        metric = MeanMetric()
        for r in records:
            metric.update(r.metric(key))
        out[names.divergent_key(key)] = float(metric.compute()) if records else 0.0
    return out
