"""Every hard-prompt method from one learned soft prompt: :func:`find_hard_prompts`
runs the chosen ones and measures each prompt found on held-out texts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from finediff.answers import AnswerSettings, check_positions
from finediff.arch import embedding_table
from finediff.errors import FinediffError
from finediff.hard_prompts.derive import DERIVED, guided, pez, project
from finediff.hard_prompts.gcg_search import GCGSettings, gcg
from finediff.hard_prompts.records import HardPrompt
from finediff.hard_prompts.scoring import (FLUENCY_WEIGHT, _header, _ranked, allowed_tokens, answered,
                                           batches_divergence, evaluate, prompt_nll, prompt_objectives)

TRAIN_BATCHES = 4
"""Batches of training texts the search scores prompts on."""
EVAL_BATCHES = 4
"""Batches of held-out texts every prompt found is measured on."""
BATCH_SIZE = 4
"""Texts per batch, for both."""
INIT_TEXTS = 64
"""Training texts ranked by the pair's divergence on each alone (method ``text``)."""
N_STARTS = 12
"""The highest of them tried as natural-language starts."""
INIT_TOKENS = 16
"""First tokens of each text taken as a start."""
WALK_FLUENT_TOP = 0
"""The walk into the perplexity budget swaps to any allowed token the gradient ranks high, not
only to the base model's likeliest there (measured: keeps the effect)."""
WALK_BRIDGING = 8
"""Swaps chosen for how they read (:func:`bridging_tokens`) scored each walk step, beside the
gradient's: they brought false_fact's derived prompt under perplexity 1,000 (docs/results.md)."""
WALK_N_CANDIDATES = 12
"""The gradient's swaps scored each walk step (16 gave a weaker prompt on false_fact: docs/results.md)."""


def text_prompt_ids(tokenizer, text: str, max_tokens: int) -> Optional[torch.Tensor]:
    """A text's first ``max_tokens`` token ids as a hard prompt (None if empty or if it
    holds a special token)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    if not ids or set(ids) & set(tokenizer.all_special_ids):
        return None
    return torch.tensor(ids)


METHODS = DERIVED + ("text", "gcg")


@dataclass
class HardPromptSettings:
    """Hard prompts from the soft prompt (``evidence.hard_prompts.*``; :func:`find_hard_prompts`)."""

    methods: List[str] = field(default_factory=lambda: list(METHODS))
    pez_steps: int = 20
    gcg_steps: int = 4
    top_k: int = 32
    n_candidates: int = 12
    """Single swaps scored exactly per GCG step."""
    fluent_top: int = 128
    """GCG swaps only to the base model's top tokens at each position (0: any)."""
    max_perplexity: Optional[float] = None
    """GCG's perplexity budget: prompts the base model reads at a higher perplexity rank
    below every prompt within it (None: no budget)."""
    budget_steps: int = 0
    """With ``max_perplexity``: GCG searches without the budget, then walks its result into
    it for this many more steps (0: the budget applies to the whole search)."""
    positions: Optional[str] = None
    """Where the search and the measurement read the divergence: None, the soft prompt's
    own objective; ``response``, over the finetuned model's answers (also from a soft prompt
    trained at the text positions); ``text``, at the text positions."""

    def __post_init__(self):
        self.methods = tuple(self.methods)
        if self.positions is not None:
            check_positions(self.positions, "evidence.hard_prompts.positions")
        if self.max_perplexity is not None and (isinstance(self.max_perplexity, bool) or not isinstance(
                self.max_perplexity, (int, float)) or self.max_perplexity <= 1):
            raise FinediffError(f"evidence.hard_prompts.max_perplexity must be a number > 1 or null; "
                                f"got {self.max_perplexity!r}")
        unknown = set(self.methods) - set(METHODS)
        if unknown or not self.methods:
            raise FinediffError(f"evidence.hard_prompts.methods: unknown {sorted(unknown) or 'empty list'}; "
                                f"choose from {', '.join(METHODS)}")
        if self.budget_steps < 0:
            raise FinediffError(f"evidence.hard_prompts.budget_steps must be >= 0; got {self.budget_steps}")
        for key, value in dict(top_k=self.top_k, n_candidates=self.n_candidates).items():
            if value < 1:
                raise FinediffError(f"evidence.hard_prompts.{key} must be >= 1, got {value}")


def find_hard_prompts(pair, prompt_PD: torch.Tensor, train_batches: list[dict], eval_batches: list[dict],
                      settings: Optional[HardPromptSettings] = None, kind: str = "kl_ft_base",
                      temperature: float = 1.0, chunk_size: int = 256, seed: int = 0,
                      answers: Optional[AnswerSettings] = None, start_PD: Optional[torch.Tensor] = None,
                      init_texts: tuple[str, ...] = (), progress: bool = True) -> list[HardPrompt]:
    """Run the methods ``settings`` chooses (:class:`HardPromptSettings`, whose fields the
    names below are) from a learned soft prompt; return hard prompts measured on
    ``eval_batches`` (held-out texts), best divergence first. ``kind``, ``temperature``,
    ``chunk_size`` and ``answers`` are the soft prompt's objective (every method's less
    :data:`FLUENCY_WEIGHT` x the prompt's base log-perplexity).

    ``init_texts`` (method ``text``) are candidate natural-language starts. They are
    ranked by the pair's divergence on each text alone; the first :data:`INIT_TOKENS`
    tokens of the :data:`N_STARTS` highest are scored as prompts on the training texts,
    and the best is kept. ``start_PD`` is the soft prompt before training (method
    ``guided``). GCG refines the start that scores best on the training texts: when a
    method deriving a prompt from the soft prompt (projection, guided, PEZ) is among
    ``methods``, the best of the derived prompts, so what it returns is derived from the
    soft prompt; else the best of every start (the projection and the text start), so a
    fluent start that already diverges is refined.

    With ``answers`` (the answer objective), ``train_batches`` carry their answers and
    ``score_mask`` already (the soft prompt's answers, which GCG searches over); every
    prompt is measured on ``eval_batches`` over the answers the finetuned model gives with
    it in place. ``max_perplexity`` is GCG's perplexity budget. With ``budget_steps`` the
    budget is not imposed on the search: GCG first searches freely for ``gcg_steps``, then
    walks its result into the budget for ``budget_steps`` more (swaps to any allowed token
    the gradient ranks high, :data:`WALK_FLUENT_TOP`), while outside the budget taking the
    best of the swaps that lower the perplexity (a strong but unreadable prompt becomes a
    readable one that keeps what it can of the effect); each walk step scores
    :data:`WALK_N_CANDIDATES` of the gradient's swaps and :data:`WALK_BRIDGING` chosen for
    how they read (:func:`gcg`'s ``bridging``).
    """
    from finediff.divergent_dataset import rank_texts

    s = settings or HardPromptSettings()
    methods, n_candidates, max_perplexity = s.methods, s.n_candidates, s.max_perplexity
    fluency_weight = FLUENCY_WEIGHT

    weight = embedding_table(pair.base)
    allowed = allowed_tokens(pair.tokenizer, weight.shape[0])
    found: dict[str, torch.Tensor] = {"projection": project(prompt_PD, weight, allowed)}
    if "guided" in methods:
        found["guided"] = guided(pair.base, _header(pair, train_batches[0]), prompt_PD, start_PD, allowed, s.fluent_top)
    if "pez" in methods:
        found["pez"] = pez(pair, prompt_PD, train_batches, allowed, s.pez_steps, kind=kind, temperature=temperature,
                           fluency_weight=fluency_weight, chunk_size=chunk_size, progress=progress)
    if "text" in methods and init_texts:
        ranked = [t for _, t in rank_texts(pair, list(init_texts), "text" if answers is None else "response",
                                           progress=progress, kind=kind)]
        starts = [ids for ids in (text_prompt_ids(pair.tokenizer, t, INIT_TOKENS) for t in ranked)
                  if ids is not None][:N_STARTS]
        if starts:
            scores = prompt_objectives(pair, starts, train_batches, kind, temperature, fluency_weight)
            found["text"] = starts[int(scores.argmax())]
    div0 = batches_divergence(pair, None, answered(pair, None, eval_batches, answers), kind, temperature, chunk_size)
    results = {m: evaluate(pair, ids, eval_batches, kind, temperature, fluency_weight, m, chunk_size, div0, answers)
               for m, ids in found.items() if m in methods}
    if "gcg" in methods:
        derived = set(methods) & set(DERIVED)  # then GCG refines a derived prompt; else the best of every start
        names = [m for m in found if m in DERIVED or not derived]
        starts = [found[m] for m in names]
        scores = prompt_objectives(pair, starts, train_batches, kind, temperature, fluency_weight)
        if max_perplexity:  # a start within the budget first
            header = _header(pair, train_batches[0])
            nll = torch.tensor([prompt_nll(pair.base, header, p).item() for p in starts])
            scores = _ranked(scores, nll, math.log(max_perplexity))
        start = found[names[int(scores.argmax())]]
        walk = bool(s.budget_steps and max_perplexity)

        def search_from(ids_P: torch.Tensor, how: GCGSettings) -> torch.Tensor:
            return gcg(pair, ids_P, train_batches, allowed, how, kind, temperature, fluency_weight, chunk_size,
                       seed=seed, progress=progress)

        ids = search_from(start, GCGSettings(s.gcg_steps, s.top_k, n_candidates, s.fluent_top,
                                             max_perplexity=None if walk else max_perplexity))
        if walk:  # then into the budget, keeping what it can of the effect
            ids = search_from(ids, GCGSettings(s.budget_steps, s.top_k, WALK_N_CANDIDATES, WALK_FLUENT_TOP,
                                               max_perplexity=max_perplexity, walk=True, bridging=WALK_BRIDGING))
        results["gcg"] = evaluate(pair, ids, eval_batches, kind, temperature, fluency_weight, "gcg", chunk_size, div0,
                                  answers)
    return sorted(results.values(), key=lambda h: h.divergence, reverse=True)
