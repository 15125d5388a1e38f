"""Every hard-prompt method from one learned soft prompt: :func:`find_hard_prompts`
runs the chosen ones and measures each prompt found on held-out texts."""

from __future__ import annotations

import math
from typing import Optional

import torch

from finediff.answers import AnswerSettings
from finediff.arch import embedding_table
from finediff.hard_prompts.derive import DERIVED, guided, pez, project
from finediff.hard_prompts.gcg_search import gcg
from finediff.hard_prompts.records import HardPrompt
from finediff.hard_prompts.scoring import (_header, _on_policy_objectives, _ranked, allowed_tokens, answered,
                                           batches_divergence, evaluate, prompt_nll, prompt_objectives)


def text_prompt_ids(tokenizer, text: str, max_tokens: int) -> Optional[torch.Tensor]:
    """A text's first ``max_tokens`` token ids as a hard prompt (None if empty or if it
    holds a special token)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    if not ids or set(ids) & set(tokenizer.all_special_ids):
        return None
    return torch.tensor(ids)


METHODS = DERIVED + ("text", "gcg")


def find_hard_prompts(pair, prompt_PD: torch.Tensor, train_batches: list[dict], eval_batches: list[dict],
                      methods: tuple[str, ...] = METHODS, kind: str = "kl_ft_base",
                      temperature: float = 1.0, fluency_weight: float = 0.02, pez_steps: int = 20,
                      gcg_steps: int = 4, top_k: int = 32, n_candidates: int = 12, chunk_size: int = 256,
                      seed: int = 0, progress: bool = True, init_texts: tuple[str, ...] = (),
                      init_tokens: int = 16, n_starts: int = 12, fluent_top: int = 128,
                      answers: Optional[AnswerSettings] = None, gcg_start: str = "derived",
                      start_PD: Optional[torch.Tensor] = None, on_policy: Optional[list[dict]] = None,
                      max_perplexity: Optional[float] = None, own_answers: bool = False,
                      budget_steps: int = 0, budget_fluent_top: int = 0, budget_bridging: int = 0,
                      budget_n_candidates: Optional[int] = None) -> list[HardPrompt]:
    """Run the chosen methods from a learned soft prompt; return hard prompts measured on
    ``eval_batches`` (held-out texts), best divergence first.

    ``init_texts`` (method ``text``) are candidate natural-language starts. They are
    ranked by the pair's divergence on each text alone; the first ``init_tokens`` tokens
    of the ``n_starts`` highest are scored as prompts on the training texts, and the best
    is kept. ``start_PD`` is the soft prompt before training (method ``guided``). GCG
    starts from whichever of the projection, guided and PEZ prompts (``gcg_start="any"``:
    and the text start) scores best on the training texts, so what it returns is derived
    from the soft prompt (or, with ``any``, a fluent start that already diverges is refined).

    With ``answers`` (the answer objective), ``train_batches`` carry their answers and
    ``score_mask`` already; every prompt is measured on ``eval_batches`` over the answers
    the finetuned model gives with it in place. ``on_policy`` (the training texts without
    answers) makes GCG's choice of start and its search on-policy: every prompt is scored
    over the answers given with it (:func:`gcg`), not over the soft prompt's answers.
    ``max_perplexity`` is GCG's perplexity budget; ``own_answers`` scores every GCG
    candidate over its own answers (on-policy search only). With ``budget_steps`` the
    budget is not imposed on the search: GCG first searches freely for ``gcg_steps``, then
    walks its result into the budget for ``budget_steps`` more (swaps to the
    ``budget_fluent_top`` tokens the base model finds likeliest; 0: any allowed token),
    while outside the budget taking the best of the swaps that lower the perplexity (a
    strong but unreadable prompt becomes a readable one that keeps what it can of the
    effect); ``budget_n_candidates`` (None: ``n_candidates``) are the gradient's swaps
    each walk step, and ``budget_bridging`` adds that many chosen for how they read
    (:func:`gcg`'s ``bridging``).
    """
    from finediff.divergent_dataset import rank_texts

    weight = embedding_table(pair.base)
    allowed = allowed_tokens(pair.tokenizer, weight.shape[0])
    found: dict[str, torch.Tensor] = {"projection": project(prompt_PD, weight, allowed)}
    if "guided" in methods:
        found["guided"] = guided(pair.base, _header(pair, train_batches[0]), prompt_PD, start_PD, allowed, fluent_top)
    if "pez" in methods:
        found["pez"] = pez(pair, prompt_PD, train_batches, allowed, pez_steps, kind=kind, temperature=temperature,
                           fluency_weight=fluency_weight, chunk_size=chunk_size, progress=progress)
    if "text" in methods and init_texts:
        ranked = [t for _, t in rank_texts(pair, list(init_texts), "text" if answers is None else "response",
                                           progress=progress, kind=kind)]
        starts = [ids for ids in (text_prompt_ids(pair.tokenizer, t, init_tokens) for t in ranked)
                  if ids is not None][:n_starts]
        if starts:
            scores = prompt_objectives(pair, starts, train_batches, kind, temperature, fluency_weight)
            found["text"] = starts[int(scores.argmax())]
    div0 = batches_divergence(pair, None, answered(pair, None, eval_batches, answers), kind, temperature, chunk_size)
    results = {m: evaluate(pair, ids, eval_batches, kind, temperature, fluency_weight, m, chunk_size, div0, answers)
               for m, ids in found.items() if m in methods}
    if "gcg" in methods:
        names = [m for m in found if gcg_start == "any" or m in DERIVED]
        starts = [found[m] for m in names]
        search = on_policy if on_policy is not None and answers is not None else None
        scores = (prompt_objectives(pair, starts, train_batches, kind, temperature, fluency_weight) if search is None
                  else _on_policy_objectives(pair, starts, search, answers, kind, temperature, fluency_weight,
                                             chunk_size))
        if max_perplexity:  # a start within the budget first
            header = _header(pair, train_batches[0])
            nll = torch.tensor([prompt_nll(pair.base, header, p).item() for p in starts])
            scores = _ranked(scores, nll, math.log(max_perplexity))
        start = found[names[int(scores.argmax())]]
        walk = bool(budget_steps and max_perplexity)

        def search_from(ids_P: torch.Tensor, steps: int, top: int, limit: Optional[float], walking: bool):
            n = budget_n_candidates if walking and budget_n_candidates is not None else n_candidates
            return gcg(pair, ids_P, search or train_batches, allowed, steps, top_k, n, kind, temperature,
                       fluency_weight, chunk_size, seed, progress, top,
                       answers=answers if search is not None else None, max_perplexity=limit,
                       own_answers=own_answers, walk=walking, bridging=budget_bridging if walking else 0)

        ids = search_from(start, gcg_steps, fluent_top, None if walk else max_perplexity, False)
        if walk:  # then into the budget, keeping what it can of the effect
            ids = search_from(ids, budget_steps, budget_fluent_top, max_perplexity, True)
        results["gcg"] = evaluate(pair, ids, eval_batches, kind, temperature, fluency_weight, "gcg", chunk_size, div0,
                                  answers)
    return sorted(results.values(), key=lambda h: h.divergence, reverse=True)
