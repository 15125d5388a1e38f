"""Divergences between the finetuned (``ft``) and base next-token distributions.

All divergences are computed from ``log_softmax`` in float32 (never softmax + epsilon),
per position, and averaged over the real text positions only: soft-prompt positions and
padding never count.

Kinds (``p`` = finetuned, ``q`` = base, both after dividing the logits by ``temperature``):

* ``kl_ft_base`` (default): KL(p || q) = sum_v p (log p - log q)
* ``kl_base_ft``: KL(q || p)
* ``symmetric_kl``: (KL(p || q) + KL(q || p)) / 2
* ``jsd``: (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2; bounded by log 2, which
  keeps gibberish prompts from winning by blowing up one distribution's tail.

Memory: the vocabulary-sized tensors (``N x V`` for ``N`` scored positions) dominate.
:func:`chunked_divergence` starts from the final hidden states, applies each model's
output head to ``chunk_size`` positions at a time under activation checkpointing, and so
never holds more than one chunk's logits, in the forward or the backward pass.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from finediff.arch import cache_kwarg, embed_ids, input_device, output_cache, output_head

from finediff.errors import FinediffError
from finediff.soft_prompt import splice, spliced_mask, text_mask

LOG2 = math.log(2.0)


class Divergence(str, Enum):
    KL_FT_BASE = "kl_ft_base"
    KL_BASE_FT = "kl_base_ft"
    SYMMETRIC_KL = "symmetric_kl"
    JSD = "jsd"


def parse_kind(kind: str | Divergence) -> Divergence:
    try:
        return Divergence(kind)
    except ValueError:
        raise FinediffError(
            f"unknown divergence {kind!r}; choose one of {[d.value for d in Divergence]}"
        ) from None


def _kl(logp: torch.Tensor, logq: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """KL(p || q) from log-probabilities. ``in_place``: the two tensors are used up (no
    gradient, not needed after), and no vocabulary-sized temporary is made: 2.3x faster at
    Gemma-3's 262k tokens, the same values (``tests/test_divergence.py``)."""
    if in_place:
        diff = logq.sub_(logp).neg_()  # log p - log q, in q's memory
        return logp.exp_().mul_(diff).sum(-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def token_divergence(
    logits_ft: torch.Tensor,
    logits_base: torch.Tensor,
    kind: str | Divergence = Divergence.KL_FT_BASE,
    temperature: float = 1.0,
    exclude: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Divergence at every position: ``[..., V]`` logits -> ``[...]`` float32 values.

    ``exclude`` (token ids) removes those tokens from both distributions before they are
    normalised: with the end-of-turn and other special tokens excluded, a model that
    wants to stop earns nothing, only what it would write instead counts."""
    kind = parse_kind(kind)
    if temperature <= 0:
        raise FinediffError(f"temperature must be > 0, got {temperature}")
    if exclude is not None and exclude.numel():
        keep = torch.ones(logits_ft.shape[-1], dtype=torch.bool, device=logits_ft.device)
        exclude = exclude.to(keep.device)
        keep[exclude[exclude < keep.numel()]] = False
        logits_ft, logits_base = logits_ft[..., keep], logits_base[..., keep]
    if temperature != 1.0:
        logits_ft, logits_base = logits_ft.float() / temperature, logits_base.float() / temperature
    logp = F.log_softmax(logits_ft.float(), dim=-1)
    logq = F.log_softmax(logits_base.float(), dim=-1)
    in_place = not (torch.is_grad_enabled() and (logp.requires_grad or logq.requires_grad))
    if kind is Divergence.KL_FT_BASE:
        return _kl(logp, logq, in_place)
    if kind is Divergence.KL_BASE_FT:
        return _kl(logq, logp, in_place)
    if kind is Divergence.SYMMETRIC_KL:
        return 0.5 * (_kl(logp, logq) + _kl(logq, logp))
    logm = torch.logsumexp(torch.stack([logp, logq]), dim=0) - LOG2
    return 0.5 * (_kl(logp, logm) + _kl(logq, logm))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is true (0 if none)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def chunked_divergence(
    hidden_ft: torch.Tensor,
    hidden_base: torch.Tensor,
    head_ft: Callable[[torch.Tensor], torch.Tensor],
    head_base: Callable[[torch.Tensor], torch.Tensor],
    mask: torch.Tensor,
    kind: str | Divergence = Divergence.KL_FT_BASE,
    temperature: float = 1.0,
    chunk_size: Optional[int] = 256,
    exclude: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Mean divergence over the masked positions, from final hidden states.

    Args:
        hidden_ft: ``[B, L, D]`` final (post-norm) hidden states of the finetuned model.
        hidden_base: ``[B, L, D]`` the same for the base model.
        head_ft: hidden -> logits for the finetuned model (see :func:`output_head`).
        head_base: hidden -> logits for the base model.
        mask: ``[B, L]`` bool, true at the positions that count.
        kind: which divergence (see module docstring).
        temperature: logits are divided by it before ``log_softmax``.
        chunk_size: positions per chunk; None or 0 computes everything at once.
        exclude: token ids left out of both distributions (:func:`token_divergence`).

    Returns:
        Scalar float32 tensor, differentiable with respect to both hidden states.
    """
    kind = parse_kind(kind)
    flat = mask.reshape(-1).nonzero(as_tuple=True)[0]
    h_ft = hidden_ft.reshape(-1, hidden_ft.shape[-1]).index_select(0, flat)
    h_base = hidden_base.reshape(-1, hidden_base.shape[-1]).index_select(0, flat)
    n = h_ft.shape[0]
    if n == 0:
        return hidden_ft.sum() * 0.0

    def chunk_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return token_divergence(head_ft(a), head_base(b), kind, temperature, exclude).sum()

    if not chunk_size or chunk_size >= n:
        total = chunk_sum(h_ft, h_base)
    else:
        total = sum(
            checkpoint(chunk_sum, h_ft[i:i + chunk_size], h_base[i:i + chunk_size], use_reentrant=False)
            for i in range(0, n, chunk_size)
        )
    return total / n


SHARED_PREFIX_MIN = 4
"""Leading positions every row of a batch shares (a chat template's system turn) that are
run once, for the whole batch, when there are at least this many."""


def shared_prefix(inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """How many leading positions every row has the same, unmasked (at most ``L - 1``)."""
    B, L = attention_mask.shape
    if B < 2 or L < 2:
        return 0
    same = (inputs_embeds == inputs_embeds[:1]).all(-1).all(0) & attention_mask.bool().all(0).to(inputs_embeds.device)
    return min(int(same.long().cumprod(0).sum()), L - 1)


def final_hidden(model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final (post-norm) hidden states ``[B, L, D]``, without computing logits, on
    ``attention_mask``'s device (the inputs go to the model's, wherever it is placed).

    The leading positions every row shares (:func:`shared_prefix`: under a chat template,
    the system turn, often most of a short prompt) are run once and their keys and values
    given to the rest of each row: the same hidden states, for a fraction of the compute
    (``benchmarks/sampling.py``). Not under gradient checkpointing, which runs without a cache."""
    decoder = model.get_decoder()
    device = input_device(model)
    embeds, mask = inputs_embeds.to(device), attention_mask.to(device)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    # not under checkpointing (no cache), nor across processes (ranks must run the same passes: a sharded model
    # gathers its weights in each one)
    k = 0 if distributed or getattr(model, "is_gradient_checkpointing", False) else shared_prefix(embeds, mask)
    head = None
    if k >= SHARED_PREFIX_MIN:
        head = decoder(inputs_embeds=embeds[:1, :k], attention_mask=mask[:1, :k], use_cache=True)
    cache = None if head is None else output_cache(head)
    if cache is None:  # nothing shared, or a model that returns no cache: every row whole
        out = decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        return out.last_hidden_state.to(attention_mask.device)
    cache.batch_repeat_interleave(embeds.shape[0])
    rest = decoder(inputs_embeds=embeds[:, k:], attention_mask=mask, use_cache=True, **{cache_kwarg(model): cache})
    h = torch.cat([head.last_hidden_state.expand(embeds.shape[0], -1, -1), rest.last_hidden_state], 1)
    return h.to(attention_mask.device)


def pair_hidden(
    pair,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_PD: Optional[torch.Tensor] = None,
    prompt_pos: Optional[torch.Tensor] = None,
    score_mask: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run both models on the text with the prompt spliced in; return ``(h_ft, h_base, score_mask)``.

    ``prompt_PD`` is a ``[P, D]`` soft prompt or ``[P]`` token ids (a hard prompt, embedded
    by each model's own embedding). The prompt goes at ``prompt_pos`` in each row (the start of the user's message under a
    chat template; the front when None). ``score_mask`` ``[B, P+T]`` is true at the real
    text positions after that point (right-padded batches): the template header, the
    prompt positions and the padding are false. A given ``score_mask`` ``[B, T]`` (e.g.
    the answer positions, :mod:`finediff.answers`) replaces the text positions. Nothing
    here is detached, so a gradient flows through both frozen models to ``prompt_PD``.
    """
    hidden = {}
    for side in ("finetuned", "base"):
        model = getattr(pair, side)
        device = input_device(model)
        embeds = embed_ids(model, input_ids)
        prompt = None if prompt_PD is None else (
            prompt_PD.to(device) if prompt_PD.is_floating_point() else embed_ids(model, prompt_PD))
        embeds, mask = splice(prompt, embeds, attention_mask.to(device), prompt_pos)
        hidden[side] = final_hidden(model, embeds, mask).to(input_ids.device)
    P = 0 if prompt_PD is None else prompt_PD.shape[0]
    if score_mask is not None:
        return hidden["finetuned"], hidden["base"], spliced_mask(score_mask, P, prompt_pos)
    return hidden["finetuned"], hidden["base"], text_mask(attention_mask, P, prompt_pos)


def pair_divergence(
    pair,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_PD: Optional[torch.Tensor] = None,
    kind: str | Divergence = Divergence.KL_FT_BASE,
    temperature: float = 1.0,
    chunk_size: Optional[int] = 256,
    prompt_pos: Optional[torch.Tensor] = None,
    score_mask: Optional[torch.Tensor] = None,
    exclude: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Mean per-token divergence of the pair on a batch of texts, with an optional prompt,
    at the text positions (or at ``score_mask``'s: the answer objective).

    This is the soft-prompt objective (the training loss is its negative); the Lightning
    module, the benchmarks and the notebooks all call this one function.
    """
    h_ft, h_base, mask = pair_hidden(pair, input_ids, attention_mask, prompt_PD, prompt_pos, score_mask)
    return chunked_divergence(h_ft, h_base, output_head(pair.finetuned), output_head(pair.base),
                              mask, kind, temperature, chunk_size, exclude)


def batch_divergence(pair, batch: dict, prompt_PD: Optional[torch.Tensor] = None,
                     kind: str | Divergence = Divergence.KL_FT_BASE, temperature: float = 1.0,
                     chunk_size: Optional[int] = 256) -> torch.Tensor:
    """:func:`pair_divergence` on a collated batch: its ``prompt_pos`` and, for the answer
    objective, its ``score_mask`` and ``exclude`` (the tokens the faithful objective
    leaves out of both distributions, :mod:`finediff.answers`)."""
    return pair_divergence(pair, batch["input_ids"], batch["attention_mask"], prompt_PD, kind, temperature,
                           chunk_size, batch.get("prompt_pos"), batch.get("score_mask"), batch.get("exclude"))


def base_shift_divergence(pair, batch: dict, prompt_PD: Optional[torch.Tensor],
                          kind: str | Divergence = Divergence.KL_FT_BASE, temperature: float = 1.0,
                          chunk_size: Optional[int] = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``(divergence, base_shift)`` on a collated batch with ``prompt_PD`` in place.

    ``divergence`` is :func:`batch_divergence`'s. ``base_shift`` is how far the prompt moves
    the *base* model's own predictions at the same scored positions: KL(base without the
    prompt || base with it), mean per token. A prompt that pushes the pair apart by breaking
    both models (the base drifting into unrelated text as well) shifts the base a lot; one
    that brings out what the finetune changed leaves the base where it was. Subtracted
    from the faithful objective (``module=faithful``), it keeps the search on the second kind.
    The prompt-free base pass runs without gradient; the gradient reaches the prompt
    through the prompted base pass only.
    """
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    prompt_pos, score_mask = batch.get("prompt_pos"), batch.get("score_mask")
    h_ft, h_base, mask = pair_hidden(pair, input_ids, attention_mask, prompt_PD, prompt_pos, score_mask)
    head_ft, head_base = output_head(pair.finetuned), output_head(pair.base)
    exclude = batch.get("exclude")
    divergence = chunked_divergence(h_ft, h_base, head_ft, head_base, mask, kind, temperature, chunk_size, exclude)
    if prompt_PD is None:
        return divergence, divergence.new_zeros(())
    with torch.no_grad():
        h_plain = final_hidden(pair.base, embed_ids(pair.base, input_ids), attention_mask)
        plain_mask = score_mask.bool() if score_mask is not None else text_mask(attention_mask, 0, prompt_pos)
    # the scored positions in the same order on both sides: the prompt only shifts them
    plain, prompted = h_plain[plain_mask].unsqueeze(0), h_base[mask].unsqueeze(0)
    ones = torch.ones(plain.shape[:2], dtype=torch.bool, device=plain.device)
    shift = chunked_divergence(plain, prompted, head_base, head_base, ones, Divergence.KL_FT_BASE, temperature,
                               chunk_size, exclude)
    return divergence, shift
