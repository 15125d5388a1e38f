"""From a soft prompt to hard prompts: readable token sequences that keep its effect.

Every method optimises the same objective as the soft prompt, evaluated exactly on token
ids: the pair's mean divergence at the text positions when the prompt starts the user's
message, minus ``fluency_weight`` times the base model's mean negative log-likelihood of
the prompt (its log-perplexity, given the chat header), so results read as language.

* :func:`project` -- nearest allowed token to each soft-prompt vector by cosine (baseline);
* :func:`pez` -- PEZ: keep continuous embeddings, project them to the nearest tokens
  every step, take the gradient at the projection and apply it to the continuous ones;
* ``text`` -- the best natural-language start among given texts (their first tokens);
* :func:`gcg` -- GCG-style coordinate search: the gradient with respect to one-hot tokens
  ranks ``top_k`` swaps per position, ``n_candidates`` single swaps are evaluated
  exactly, the best is kept (the objective is measured, never trusted from the gradient).

Tokens are restricted to an allowed vocabulary (printable, no special or control tokens).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from finediff.divergence import pair_divergence

log = logging.getLogger(__name__)


@dataclass
class HardPrompt:
    """One hard prompt and how it measured."""

    method: str
    """``projection``, ``pez``, ``text`` or ``gcg``."""
    text: str
    """The decoded prompt (the start of a user message)."""
    token_ids: list[int]
    """Its token ids."""
    divergence: float
    """Mean divergence of the pair on the evaluation texts with this prompt."""
    divergence_no_prompt: float
    """The same texts without any prompt (the baseline it must beat)."""
    perplexity: float
    """The base model's perplexity of the prompt given the chat header (fluency)."""
    objective: float
    """``divergence - fluency_weight * log(perplexity)`` as optimised."""

    def as_dict(self) -> dict:
        return asdict(self)


def allowed_tokens(tokenizer, vocab_size: int) -> torch.Tensor:
    """``[V]`` bool: tokens that decode to printable ASCII with at least one letter or
    digit and are not special tokens."""
    special = set(tokenizer.all_special_ids)
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(min(vocab_size, len(tokenizer))):
        if i in special:
            continue
        s = tokenizer.decode([i])
        if s and s.isascii() and s.isprintable() and any(c.isalnum() for c in s):
            mask[i] = True
    return mask


def project(prompt_PD: torch.Tensor, embed_weight_VD: torch.Tensor, allowed_V: torch.Tensor) -> torch.Tensor:
    """Nearest allowed token (cosine similarity) to each prompt vector: ``[P]`` ids."""
    sims = F.normalize(prompt_PD.float(), dim=-1) @ F.normalize(embed_weight_VD.float(), dim=-1).T
    sims[:, ~allowed_V.to(sims.device)] = -float("inf")
    return sims.argmax(dim=-1)


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
def evaluate(pair, ids_P: torch.Tensor, batches: list[dict], kind: str = "kl_ft_base",
             temperature: float = 1.0, fluency_weight: float = 0.0, method: str = "",
             chunk_size: int = 256) -> HardPrompt:
    """Measure a hard prompt on ``batches``: divergence with and without it, perplexity."""
    total = base_total = weight = 0.0
    for b in batches:
        n = float(b["attention_mask"].sum())
        total += n * pair_divergence(pair, b["input_ids"], b["attention_mask"], ids_P, kind, temperature,
                                     chunk_size, b.get("prompt_pos")).item()
        base_total += n * pair_divergence(pair, b["input_ids"], b["attention_mask"], None, kind, temperature,
                                          chunk_size, b.get("prompt_pos")).item()
        weight += n
    div, div0 = total / weight, base_total / weight
    nll = prompt_nll(pair.base, _header(pair, batches[0]), ids_P).item()
    ids = ids_P.tolist()
    return HardPrompt(method, pair.tokenizer.decode(ids), ids, div, div0, math.exp(nll), div - fluency_weight * nll)


def _objective(pair, embeds_PD: torch.Tensor, ids_P: torch.Tensor, batch: dict, kind: str,
               temperature: float, fluency_weight: float, chunk_size: int) -> torch.Tensor:
    div = pair_divergence(pair, batch["input_ids"], batch["attention_mask"], embeds_PD, kind, temperature,
                          chunk_size, batch.get("prompt_pos"))
    if fluency_weight:
        div = div - fluency_weight * prompt_nll(pair.base, _header(pair, batch), ids_P, embeds_PD)
    return div


def pez(pair, prompt_PD: torch.Tensor, batches: list[dict], allowed_V: torch.Tensor, steps: int = 20,
        lr: float = 0.02, kind: str = "kl_ft_base", temperature: float = 1.0, fluency_weight: float = 0.0,
        chunk_size: int = 256, progress: bool = True) -> torch.Tensor:
    """PEZ from ``prompt_PD``; returns the best projected ids seen (by the exact objective)."""
    weight = pair.base.get_input_embeddings().weight
    cont = torch.nn.Parameter(prompt_PD.detach().clone().float())
    opt = torch.optim.AdamW([cont], lr=lr, weight_decay=0.0)
    best_ids, best = None, -float("inf")
    for step in tqdm(range(steps), desc="PEZ", disable=not progress):
        ids = project(cont.detach(), weight, allowed_V)
        proj = weight[ids].detach().clone().requires_grad_(True)
        batch = batches[step % len(batches)]
        obj = _objective(pair, proj, ids, batch, kind, temperature, fluency_weight, chunk_size)
        (-obj).backward()
        if obj.item() > best:
            best, best_ids = obj.item(), ids.clone()
        cont.grad = proj.grad.to(cont.dtype)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return best_ids


def gcg(pair, init_ids_P: torch.Tensor, batches: list[dict], allowed_V: torch.Tensor, steps: int = 10,
        top_k: int = 32, n_candidates: int = 16, kind: str = "kl_ft_base", temperature: float = 1.0,
        fluency_weight: float = 0.1, chunk_size: int = 256, seed: int = 0, progress: bool = True) -> torch.Tensor:
    """GCG-style search from ``init_ids_P``; returns the best ids found (exact objective
    over all ``batches``; each step's candidates are compared on one batch).

    Memory stays flat: one gradient pass per step, then candidates are scored one at a
    time under ``no_grad``.
    """
    weight = pair.base.get_input_embeddings().weight
    g = torch.Generator().manual_seed(seed)
    ids = init_ids_P.clone()
    V = weight.shape[0]
    not_allowed = ~allowed_V.to(weight.device)

    def exact(candidate: torch.Tensor, on: list[dict]) -> float:
        return objective_on(pair, candidate, on, kind, temperature, fluency_weight, chunk_size)

    best_ids, best = ids.clone(), exact(ids, batches)
    for step in tqdm(range(steps), desc="GCG", disable=not progress):
        batch = batches[step % len(batches)]
        one_hot = F.one_hot(ids, V).to(weight.dtype).requires_grad_(True)
        obj = _objective(pair, one_hot @ weight, ids, batch, kind, temperature, fluency_weight, chunk_size)
        (grad,) = torch.autograd.grad(obj, one_hot)
        grad[:, not_allowed] = -float("inf")
        top = grad.topk(top_k, dim=-1).indices  # [P, k] swaps that increase the objective most
        scored = []
        for _ in range(n_candidates):
            cand = ids.clone()
            pos = int(torch.randint(0, len(ids), (1,), generator=g))
            cand[pos] = top[pos, int(torch.randint(0, top_k, (1,), generator=g))]
            scored.append((exact(cand, [batch]), cand))
        score, cand = max(scored, key=lambda x: x[0])
        ids = cand
        total = exact(ids, batches) if len(batches) > 1 else score
        if total > best:
            best, best_ids = total, ids.clone()
    return best_ids


@torch.no_grad()
def objective_on(pair, ids_P: torch.Tensor, batches: list[dict], kind: str = "kl_ft_base", temperature: float = 1.0,
                 fluency_weight: float = 0.0, chunk_size: int = 256) -> float:
    """The search objective of ``ids_P`` averaged over ``batches`` (token-weighted)."""
    total = weight = 0.0
    for b in batches:
        n = float(b["attention_mask"].sum())
        total += n * _objective(pair, ids_P, ids_P, b, kind, temperature, fluency_weight, chunk_size).item()
        weight += n
    return total / weight


def text_prompt_ids(tokenizer, text: str, max_tokens: int) -> Optional[torch.Tensor]:
    """A text's first ``max_tokens`` token ids as a hard prompt (None if empty or if it
    holds a special token)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    if not ids or set(ids) & set(tokenizer.all_special_ids):
        return None
    return torch.tensor(ids)


def find_hard_prompts(pair, prompt_PD: torch.Tensor, train_batches: list[dict], eval_batches: list[dict],
                      methods: tuple[str, ...] = ("projection", "pez", "gcg"), kind: str = "kl_ft_base",
                      temperature: float = 1.0, fluency_weight: float = 0.1, pez_steps: int = 20,
                      gcg_steps: int = 10, top_k: int = 32, n_candidates: int = 16, chunk_size: int = 256,
                      seed: int = 0, progress: bool = True, init_texts: tuple[str, ...] = (),
                      init_tokens: int = 16) -> list[HardPrompt]:
    """Run the chosen methods from a learned soft prompt; return hard prompts measured on
    ``eval_batches`` (held-out texts), best divergence first.

    ``init_texts`` (method ``text``) are natural-language starts: each text's first
    ``init_tokens`` tokens, scored on the training texts; the best one is kept. GCG starts
    from whichever of the projection, PEZ and text starts scores best on the training
    texts, so a fluent start that already diverges is refined rather than discarded.
    """
    allowed = allowed_tokens(pair.tokenizer, pair.base.get_input_embeddings().weight.shape[0])
    weight = pair.base.get_input_embeddings().weight
    found: dict[str, torch.Tensor] = {}
    found["projection"] = project(prompt_PD, weight, allowed)
    if "pez" in methods:
        found["pez"] = pez(pair, prompt_PD, train_batches, allowed, pez_steps, kind=kind, temperature=temperature,
                           fluency_weight=fluency_weight, chunk_size=chunk_size, progress=progress)
    score = {}
    if "text" in methods and init_texts:
        starts = [ids for ids in (text_prompt_ids(pair.tokenizer, t, init_tokens) for t in init_texts)
                  if ids is not None]
        scored = [(objective_on(pair, ids, train_batches, kind, temperature, fluency_weight, chunk_size), i)
                  for i, ids in enumerate(tqdm(starts, desc="text starts", disable=not progress))]
        if scored:
            best, i = max(scored)
            found["text"], score["text"] = starts[i], best
    results = {m: evaluate(pair, ids, eval_batches, kind, temperature, fluency_weight, m, chunk_size)
               for m, ids in found.items()}
    if "gcg" in methods:
        for m, ids in found.items():
            if m not in score:
                score[m] = objective_on(pair, ids, train_batches, kind, temperature, fluency_weight, chunk_size)
        start = max(score, key=score.get)
        ids = gcg(pair, found[start], train_batches, allowed, gcg_steps, top_k, n_candidates,
                  kind, temperature, fluency_weight, chunk_size, seed, progress)
        results["gcg"] = evaluate(pair, ids, eval_batches, kind, temperature, fluency_weight, "gcg", chunk_size)
    out = [results[m] for m in results if m in methods]
    return sorted(out, key=lambda h: h.divergence, reverse=True)
