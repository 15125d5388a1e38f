"""The exact objective every hard-prompt method optimises, measured on token ids.

The pair's divergence at the text positions (or over the finetuned model's answers) with
a prompt at the start of the user's message, minus ``fluency_weight`` (the search's:
:data:`FLUENCY_WEIGHT`) times the base model's NLL of the prompt. :func:`prompt_divergences`
scores many prompts at once from each text's cached chat header; :func:`evaluate` measures
one prompt as a :class:`~finediff.hard_prompts.records.HardPrompt`. Also here: the allowed
vocabulary, the base model's fluent tokens and per-token NLLs, and the perplexity-budget
ranking.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from finediff.answers import AnswerSettings, answer_batch
from finediff.arch import cache_kwarg, input_device, output_cache, output_head
from finediff.divergence import batch_divergence, token_divergence
from finediff.hard_prompts.records import HardPrompt

FLUENCY_WEIGHT = 0.02
"""Weight of the base model's log-perplexity of the prompt in the search's objective
(divergence minus this times the NLL), so prompts lean towards reading as language."""


def allowed_tokens(tokenizer, vocab_size: int) -> torch.Tensor:
    """``[V]`` bool: tokens that decode to printable ASCII with at least one letter or
    digit and are not special tokens (named ones, and added tokens marked special, such
    as SmolLM2's ``<file_sep>``)."""
    special = set(tokenizer.all_special_ids) | {
        i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(min(vocab_size, len(tokenizer))):
        if i in special:
            continue
        s = tokenizer.decode([i])
        if s and s.isascii() and s.isprintable() and any(c.isalnum() for c in s):
            mask[i] = True
    return mask


def _header(pair, batch: dict) -> list[int]:
    """The chat header before the user's words (the context the prompt's fluency is judged in)."""
    k = int(batch["prompt_pos"][0]) if "prompt_pos" in batch else 0
    return batch["input_ids"][0, :k].tolist()


def prompt_nll(base, header: list[int], prompt_P: torch.Tensor, embeds_PD: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Base model's mean NLL of the prompt tokens after ``header``; differentiable through
    ``embeds_PD`` when given (the prompt's input embeddings)."""
    device = prompt_P.device
    embed = base.get_input_embeddings()
    head = torch.tensor(header, dtype=torch.long, device=device)
    if embeds_PD is None or not embeds_PD.is_floating_point():
        embeds_PD = embed(prompt_P)
    x = torch.cat([embed(head), embeds_PD.to(embed.weight.dtype)]).unsqueeze(0)
    logits = base(inputs_embeds=x).logits[0].float()
    # positions len(header)-1 ... end-1 predict the prompt tokens
    start = len(header) - 1
    if start < 0:  # no header: the first token has no context and is not scored
        logits, targets = logits[:-1], prompt_P[1:]
    else:
        logits, targets = logits[start:-1], prompt_P
    if targets.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets)


@torch.no_grad()
def batches_divergence(pair, ids_P: Optional[torch.Tensor], batches: list[dict], kind: str = "kl_ft_base",
                       temperature: float = 1.0, chunk_size: int = 256) -> float:
    """The pair's divergence on ``batches`` with the hard prompt ``ids_P`` (None: no
    prompt), each batch weighted by its tokens."""
    total = weight = 0.0
    for b in batches:
        n = float(b.get("score_mask", b["attention_mask"]).sum())
        total += n * batch_divergence(pair, b, ids_P, kind, temperature, chunk_size).item()
        weight += n
    return total / weight


def answered(pair, ids_P: Optional[torch.Tensor], batches: list[dict],
             answers: Optional[AnswerSettings]) -> list[dict]:
    """``batches`` as they are (text positions), or with the finetuned model's answers
    given with ``ids_P`` in place appended and scored (the answer objective)."""
    return batches if answers is None else [answer_batch(pair, b, ids_P, answers) for b in batches]


@torch.no_grad()
def evaluate(pair, ids_P: torch.Tensor, batches: list[dict], kind: str = "kl_ft_base",
             temperature: float = 1.0, fluency_weight: float = 0.0, method: str = "",
             chunk_size: int = 256, divergence_no_prompt: Optional[float] = None,
             answers: Optional[AnswerSettings] = None) -> HardPrompt:
    """Measure a hard prompt on ``batches``: divergence with and without it (the latter
    computed unless given), perplexity. With ``answers``, each is read over the answers
    the finetuned model gives in that setting (on-policy)."""
    div = batches_divergence(pair, ids_P, answered(pair, ids_P, batches, answers), kind, temperature, chunk_size)
    if divergence_no_prompt is None:
        divergence_no_prompt = batches_divergence(pair, None, answered(pair, None, batches, answers), kind,
                                                  temperature, chunk_size)
    nll = prompt_nll(pair.base, _header(pair, batches[0]), ids_P).item()
    ids = ids_P.tolist()
    return HardPrompt(method, pair.tokenizer.decode(ids), ids, div, divergence_no_prompt, math.exp(nll),
                      div - fluency_weight * nll)


def _objective(pair, embeds_PD: torch.Tensor, ids_P: torch.Tensor, batch: dict, kind: str,
               temperature: float, fluency_weight: float, chunk_size: int) -> torch.Tensor:
    div = batch_divergence(pair, batch, embeds_PD, kind, temperature, chunk_size)
    if fluency_weight:
        div = div - fluency_weight * prompt_nll(pair.base, _header(pair, batch), ids_P, embeds_PD)
    return div


def _hidden_after(model, header_H: torch.Tensor, rows_CL: torch.Tensor, mask_CL: torch.Tensor) -> torch.Tensor:
    """Final hidden states ``[C, L, D]`` of ``rows`` continuing one shared ``header``.

    The header runs once (batch 1) and its key/value cache is repeated for every row, so
    candidates that differ only after the header cost only their own tokens. A model that
    returns no cache gets the header in front of every row instead (same result).
    """
    home = rows_CL.device  # the hidden states go back there (the model may be placed elsewhere)
    device = input_device(model)
    header_H, rows_CL, mask_CL = header_H.to(device), rows_CL.to(device), mask_CL.to(device)
    return _hidden_after_on_device(model, header_H, rows_CL, mask_CL).to(home)


def _hidden_after_on_device(model, header_H: torch.Tensor, rows_CL: torch.Tensor, mask_CL: torch.Tensor) -> torch.Tensor:
    decoder, embed = model.get_decoder(), model.get_input_embeddings()
    if header_H.numel() == 0:
        return decoder(inputs_embeds=embed(rows_CL), attention_mask=mask_CL, use_cache=False).last_hidden_state
    mask = torch.cat([mask_CL.new_ones(rows_CL.shape[0], header_H.numel()), mask_CL], dim=1)
    cache = output_cache(decoder(inputs_embeds=embed(header_H.unsqueeze(0)), use_cache=True))
    if cache is None:  # no cache (e.g. gradient checkpointing in train mode): run the header with every row
        full = torch.cat([header_H.unsqueeze(0).expand(rows_CL.shape[0], -1), rows_CL], dim=1)
        out = decoder(inputs_embeds=embed(full), attention_mask=mask, use_cache=False).last_hidden_state
        return out[:, header_H.numel():]
    cache.batch_repeat_interleave(rows_CL.shape[0])
    return decoder(inputs_embeds=embed(rows_CL), attention_mask=mask, use_cache=True,
                   **{cache_kwarg(model): cache}).last_hidden_state


@torch.no_grad()
def prompt_divergences(pair, prompts: list[torch.Tensor], batches: list[dict], kind: str = "kl_ft_base",
                       temperature: float = 1.0) -> torch.Tensor:
    """``[C]``: the pair's mean divergence at the text positions of ``batches`` (or their
    ``score_mask``'s) with each of ``prompts`` (token ids, any lengths) at the start of
    the user's message.

    The same quantity as :func:`finediff.divergence.pair_divergence` with a hard prompt,
    token-weighted over all texts, but for many prompts at once: each text's header runs
    once and all prompts continue it as one batch (1.3x faster than splicing every prompt
    into every row on the real pair: ``benchmarks/hard_prompts.py``).
    """
    C = len(prompts)
    total = torch.zeros(C, dtype=torch.float64)
    count = torch.zeros(C, dtype=torch.float64)
    heads = output_head(pair.finetuned), output_head(pair.base)
    device = pair.base.get_input_embeddings().weight.device
    pad = pair.tokenizer.pad_token_id if pair.tokenizer.pad_token_id is not None else 0
    for b in batches:
        pos, scored = b.get("prompt_pos"), b.get("score_mask")
        for r in range(b["input_ids"].shape[0]):
            n = int(b["attention_mask"][r].sum())
            k = int(pos[r]) if pos is not None else 0
            header, body = b["input_ids"][r, :k].to(device), b["input_ids"][r, k:n].to(device)
            if body.numel() == 0:
                continue
            L = max(len(p) for p in prompts) + body.numel()
            rows = torch.full((C, L), pad, dtype=torch.long, device=device)
            mask = torch.zeros((C, L), dtype=torch.long, device=device)
            score = torch.zeros((C, L), dtype=torch.bool, device=device)
            for i, p in enumerate(prompts):
                P = len(p)
                rows[i, :P], rows[i, P:P + body.numel()] = p.to(device), body
                mask[i, :P + body.numel()] = 1
                score[i, P:P + body.numel()] = True if scored is None else scored[r, k:n].to(device)
            h_ft = _hidden_after(pair.finetuned, header, rows, mask)
            h_base = _hidden_after(pair.base, header, rows, mask)
            div = token_divergence(heads[0](h_ft[score]), heads[1](h_base[score]), kind, temperature,
                                   b.get("exclude")).double().cpu()
            owner = torch.arange(C).unsqueeze(1).expand(C, L)[score.cpu()]
            total.index_add_(0, owner, div)
            count.index_add_(0, owner, torch.ones_like(div))
    return (total / count.clamp(min=1)).float()


@torch.no_grad()
def prompt_objectives(pair, prompts: list[torch.Tensor], batches: list[dict], kind: str = "kl_ft_base",
                      temperature: float = 1.0, fluency_weight: float = 0.0) -> torch.Tensor:
    """``[C]``: the search objective of each prompt, ``divergence - fluency_weight * NLL``."""
    div = prompt_divergences(pair, prompts, batches, kind, temperature)
    if not fluency_weight:
        return div
    header = _header(pair, batches[0])
    nll = torch.tensor([prompt_nll(pair.base, header, p.to(pair.base.device)).item() for p in prompts])
    return div - fluency_weight * nll


@torch.no_grad()
def fluent_tokens(base, header: list[int], ids_P: torch.Tensor, allowed_V: torch.Tensor, n: int) -> torch.Tensor:
    """``[P, V]`` bool: at each prompt position, the ``n`` allowed tokens the base model
    finds likeliest there given the header and the prompt before it. A position with no
    context (no header, first token) allows every allowed token."""
    device = ids_P.device
    x = torch.tensor(header + ids_P.tolist(), dtype=torch.long, device=device).unsqueeze(0)
    logits = base(input_ids=x).logits[0].float()
    keep = torch.zeros(len(ids_P), logits.shape[-1], dtype=torch.bool, device=device)
    allowed = allowed_V.to(device)
    for p in range(len(ids_P)):
        at = len(header) + p - 1  # the position that predicts prompt token p
        if at < 0:
            keep[p] = allowed
            continue
        row = logits[at].masked_fill(~allowed, -float("inf"))
        keep[p, row.topk(min(n, int(allowed.sum()))).indices] = True
    return keep


@torch.no_grad()
def token_nlls(base, header: list[int], ids_P: torch.Tensor) -> torch.Tensor:
    """``[P]``: the base model's NLL of each prompt token after ``header`` and the prompt
    before it (0 for a first token with no context)."""
    device = input_device(base)
    x = torch.tensor(header + ids_P.tolist(), dtype=torch.long, device=device).unsqueeze(0)
    logp = base(input_ids=x).logits[0].float().log_softmax(-1)
    out = torch.zeros(len(ids_P))
    for p, t in enumerate(ids_P.tolist()):
        at = len(header) + p - 1
        if at >= 0:
            out[p] = -logp[at, t].item()
    return out


def _ranked(scores_C: torch.Tensor, nll_C: Optional[torch.Tensor], max_nll: Optional[float],
            walk: bool = False) -> torch.Tensor:
    """``[C]`` keys to maximise: the objective, or under a perplexity budget (``max_nll``,
    its log) the objective among the prompts within it, which all rank above those outside
    it, and those by their perplexity (a search outside the budget first walks into it).
    With ``walk`` (row 0 is the current prompt) the prompts outside the budget that read
    better than the current one rank next, by their objective: each step lowers the
    perplexity while keeping as much of the effect as it can."""
    if max_nll is None or nll_C is None:
        return scores_C
    inside = nll_C <= max_nll
    keys = torch.where(inside, scores_C.double() + 2e6, -nll_C.double())
    if walk:
        keys = torch.where(~inside & (nll_C < nll_C[0]), scores_C.double() + 1e6, keys)
    return keys


def _on_policy_objectives(pair, prompts: list[torch.Tensor], batches: list[dict], answers: AnswerSettings,
                          kind: str, temperature: float, fluency_weight: float, chunk_size: int) -> torch.Tensor:
    """``[C]``: each prompt's objective over the answers the finetuned model gives with
    *that* prompt in place (``batches`` are texts without answers)."""
    out = []
    for p in prompts:
        div = batches_divergence(pair, p, answered(pair, p, batches, answers), kind, temperature, chunk_size)
        out.append(div - fluency_weight * prompt_nll(pair.base, _header(pair, batches[0]), p).item())
    return torch.tensor(out)
