"""GCG-style coordinate search over token swaps (:func:`gcg`), its walk into a
perplexity budget, and the swaps chosen for how they read (:func:`bridging_tokens`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from finediff.answers import AnswerSettings
from finediff.arch import embedding_table, input_device, output_head
from finediff.hard_prompts.scoring import (FLUENCY_WEIGHT, _header, _hidden_after_on_device, _objective,
                                           _on_policy_objectives, _ranked, answered, fluent_tokens, prompt_nll,
                                           prompt_objectives, token_nlls)


@torch.no_grad()
def bridging_tokens(base, header: list[int], ids_P: torch.Tensor, eligible_V: torch.Tensor, pos: int, n: int,
                    pool: int = 2048, chunk: int = 512) -> list[int]:
    """Up to ``n`` tokens that read best at prompt position ``pos``: among the ``pool``
    eligible tokens the base model finds likeliest there, those maximising
    ``log p(t | before) + log p(next | before, t)``, both exact (one batched step on the
    cached context per chunk). The second term is what a one-hot gradient misses: a
    word-piece reads well only after the right start of its word, and that start is
    rarely likely on its own."""
    device = input_device(base)
    before = header + ids_P[:pos].tolist()
    eligible = eligible_V.to(device)
    if before:
        logp = base(input_ids=torch.tensor([before], device=device)).logits[0, -1].float().log_softmax(-1)
    else:
        logp = torch.zeros(eligible.shape[0], device=device)
    logp = logp.masked_fill(~eligible, -float("inf"))
    k = min(pool, int(eligible.sum()))
    if k == 0:
        return []
    first = logp.topk(k)
    score = first.values.clone()
    if pos + 1 < len(ids_P):
        nxt = int(ids_P[pos + 1])
        head, context = output_head(base), torch.tensor(before, dtype=torch.long, device=device)
        seconds = []
        for c in first.indices.split(chunk):
            rows = torch.stack([c, torch.full_like(c, nxt)], dim=1)
            h = _hidden_after_on_device(base, context, rows, torch.ones_like(rows))
            seconds.append(head(h[:, 0]).float().log_softmax(-1)[:, nxt])
        score = score + torch.cat(seconds)
    return first.indices[score.topk(min(n, k)).indices].tolist()


@dataclass(frozen=True)
class GCGSettings:
    """How :func:`gcg` searches (the objective it searches on is passed beside)."""

    steps: int = 8
    top_k: int = 32
    """Swaps per position the gradient favours, the candidates' pool."""
    n_candidates: int = 12
    """Single swaps scored exactly per step."""
    fluent_top: int = 128
    """Only the base model's this many likeliest tokens at a position are eligible (0: any allowed)."""
    batches_per_step: Optional[int] = None
    """Batches each step scores on, taken in turn (None: half of them, at least one)."""
    max_perplexity: Optional[float] = None
    """Prompts the base model reads within this perplexity rank first (None: no budget)."""
    walk: bool = False
    """With ``max_perplexity``: outside the budget, take the best swap that lowers the perplexity."""
    bridging: int = 0
    """More candidates a step, chosen for how they read (:func:`bridging_tokens`)."""


def gcg(pair, init_ids_P: torch.Tensor, batches: list[dict], allowed_V: torch.Tensor,
        search: GCGSettings = GCGSettings(), kind: str = "kl_ft_base", temperature: float = 1.0,
        fluency_weight: float = FLUENCY_WEIGHT, chunk_size: int = 256, answers: Optional[AnswerSettings] = None,
        seed: int = 0, progress: bool = True) -> torch.Tensor:
    """GCG-style search from ``init_ids_P``; returns the best ids found. ``search``
    (:class:`GCGSettings`) holds the settings named below; ``kind``, ``temperature``,
    ``fluency_weight``, ``chunk_size`` and ``answers`` are the objective.

    Each step: the gradient of the objective with respect to one-hot tokens ranks swaps;
    at each position only the ``fluent_top`` tokens the base model finds likeliest there
    are eligible (0: any allowed token), and the ``top_k`` of those the gradient favours
    are the candidates. ``n_candidates`` distinct single swaps are drawn and scored
    exactly (:func:`prompt_objectives`) with the current prompt on ``batches_per_step``
    of ``batches`` (taken in turn; None: half of them, at least one); the best replaces the
    current prompt if it scores higher there. At the end the result is scored on all
    ``batches`` and returned only if it beats the start, so the search never ends below
    the start on ``batches``.

    With ``answers`` the search is on-policy: ``batches`` are texts without answers, each
    step scores the candidates over the answers the finetuned model gives with the current
    prompt in place, and the final comparison scores the start and the result each over
    its own answers, as the held-out evaluation does. With ``max_perplexity`` every
    comparison prefers prompts whose base perplexity is within it (:func:`_ranked`); with
    ``walk`` as well, outside it each step takes the best of the swaps that lower the
    perplexity. ``bridging`` more candidates each step are chosen for how they read, not
    by the gradient: at the token the base model finds least likely and at the one before
    it, :func:`bridging_tokens` (the swaps that make that stretch of the prompt read best).
    """
    steps, top_k, n_candidates, fluent_top = search.steps, search.top_k, search.n_candidates, search.fluent_top
    max_perplexity, walk, bridging = search.max_perplexity, search.walk, search.bridging
    weight = embedding_table(pair.base)
    g = torch.Generator().manual_seed(seed)
    header = _header(pair, batches[0])
    start = ids = init_ids_P.clone().to(weight.device)
    V = weight.shape[0]
    allowed = allowed_V.to(weight.device)
    per_step = min(len(batches), search.batches_per_step or max(1, len(batches) // 2))
    max_nll = math.log(max_perplexity) if max_perplexity else None

    def nll(prompts: list[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if max_nll is None else torch.tensor(
            [prompt_nll(pair.base, header, p.to(weight.device)).item() for p in prompts])

    bar = tqdm(range(steps), desc="GCG", disable=not progress)
    for step in bar:
        texts = [batches[(step * per_step + j) % len(batches)] for j in range(per_step)]
        on = answered(pair, ids, texts, answers)  # on-policy: the answers given with the current prompt
        one_hot = F.one_hot(ids, V).to(weight.dtype).requires_grad_(True)
        obj = _objective(pair, one_hot @ weight, ids, on[0], kind, temperature, fluency_weight, chunk_size)
        (grad,) = torch.autograd.grad(obj, one_hot)
        eligible = fluent_tokens(pair.base, header, ids, allowed, fluent_top) if fluent_top else \
            allowed.unsqueeze(0).expand(len(ids), -1).clone()
        eligible[torch.arange(len(ids)), ids] = False  # a swap must change the token
        top = grad.float().masked_fill(~eligible, -float("inf")).topk(top_k, dim=-1)
        seen, cands = set(), []
        if bridging:
            worst = int(token_nlls(pair.base, header, ids).argmax())
            places = [worst - 1, worst] if worst > 0 else [worst]
            for i, pos in enumerate(places):
                share = bridging // len(places) + (i < bridging % len(places))
                for token in bridging_tokens(pair.base, header, ids, eligible[pos], pos, share):
                    seen.add((pos, token))
                    cand = ids.clone()
                    cand[pos] = token
                    cands.append(cand)
        want = n_candidates + len(cands)  # the gradient's draws come on top
        for _ in range(n_candidates * 4):
            if len(cands) == want:
                break
            pos = int(torch.randint(0, len(ids), (1,), generator=g))
            j = int(torch.randint(0, top_k, (1,), generator=g))
            token = int(top.indices[pos, j])
            if not torch.isfinite(top.values[pos, j]) or (pos, token) in seen:
                continue
            seen.add((pos, token))
            cand = ids.clone()
            cand[pos] = token
            cands.append(cand)
        if not cands:
            break
        scores = prompt_objectives(pair, [ids] + cands, on, kind, temperature, fluency_weight)
        i = int(_ranked(scores, nll([ids] + cands), max_nll, walk).argmax())
        if i > 0:
            ids = cands[i - 1]
        bar.set_postfix(objective=f"{float(scores[i]):.4f}")
    if ids.equal(start):
        return ids
    ends = [start, ids]
    final = (prompt_objectives(pair, ends, batches, kind, temperature, fluency_weight) if answers is None else
             _on_policy_objectives(pair, ends, batches, answers, kind, temperature, fluency_weight, chunk_size))
    before, after = _ranked(final, nll(ends), max_nll, walk).tolist()
    return ids if after > before else start
