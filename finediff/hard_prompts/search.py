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


@dataclass
class HardPromptSettings:
    """Hard prompts from the soft prompt (``evidence.hard_prompts.*``; :func:`find_hard_prompts`)."""

    methods: List[str] = field(default_factory=lambda: list(METHODS))
    fluency_weight: float = 0.02
    """Weight of the base model's log-perplexity of the prompt in the objective."""
    pez_steps: int = 20
    gcg_steps: int = 4
    top_k: int = 32
    n_candidates: int = 12
    """Single swaps scored exactly per GCG step."""
    fluent_top: int = 128
    """GCG swaps only to the base model's top tokens at each position (0: any)."""
    train_batches: int = 4
    eval_batches: int = 4
    batch_size: int = 4
    init_texts: int = 64
    """Training texts ranked by their divergence alone (method ``text``)."""
    n_starts: int = 12
    """The highest of them tried as natural-language starts."""
    init_tokens: int = 16
    """First tokens of each start."""
    gcg_start: str = "derived"
    """``derived``: GCG refines the best of the projection, guided and PEZ prompts (a prompt
    derived from the soft prompt); ``any``: the best start, natural-language text starts included."""
    gcg_on_policy: bool = False
    """On the answer objective, GCG scores each prompt over the answers given with it in
    place (as the held-out evaluation does), not over the soft prompt's answers."""
    max_perplexity: Optional[float] = None
    """GCG's perplexity budget: prompts the base model reads at a higher perplexity rank
    below every prompt within it (None: no budget)."""
    budget_steps: int = 0
    """With ``max_perplexity``: GCG searches without the budget, then walks its result into
    it for this many more steps (0: the budget applies to the whole search)."""
    budget_fluent_top: int = 0
    """> 0: the walk swaps only to the base model's this many likeliest tokens at each
    position; 0: to any allowed token the gradient ranks high (measured: keeps the effect)."""
    budget_bridging: int = 0
    """> 0: each walk step also scores this many swaps chosen for how they read (at the
    token the base model finds least likely and the one before it: :func:`bridging_tokens`)."""
    budget_n_candidates: Optional[int] = None
    """The gradient's swaps scored each walk step (None: ``n_candidates``, as in the search)."""
    gcg_own_answers: bool = False
    """On-policy GCG scores every candidate swap over the answers given with it in place
    (one more answer per candidate and text each step), not over the current prompt's."""
    positions: Optional[str] = None
    """Where the search and the measurement read the divergence: None, the soft prompt's
    own objective; ``response``, over the finetuned model's answers (also from a soft prompt
    trained at the text positions); ``text``, at the text positions."""

    def __post_init__(self):
        self.methods = tuple(self.methods)
        if self.positions is not None:
            check_positions(self.positions, "evidence.hard_prompts.positions")
        if self.gcg_start not in ("derived", "any"):
            raise FinediffError(f"evidence.hard_prompts.gcg_start must be derived or any; got {self.gcg_start!r}")
        if self.max_perplexity is not None and (isinstance(self.max_perplexity, bool) or not isinstance(
                self.max_perplexity, (int, float)) or self.max_perplexity <= 1):
            raise FinediffError(f"evidence.hard_prompts.max_perplexity must be a number > 1 or null; "
                                f"got {self.max_perplexity!r}")
        unknown = set(self.methods) - set(METHODS)
        if unknown or not self.methods:
            raise FinediffError(f"evidence.hard_prompts.methods: unknown {sorted(unknown) or 'empty list'}; "
                                f"choose from {', '.join(METHODS)}")
        if self.budget_steps < 0 or self.budget_fluent_top < 0 or self.budget_bridging < 0:
            raise FinediffError(f"evidence.hard_prompts.budget_steps, budget_fluent_top and budget_bridging must be "
                                f">= 0; got {self.budget_steps}, {self.budget_fluent_top} and {self.budget_bridging}")
        counts = dict(top_k=self.top_k, n_candidates=self.n_candidates, train_batches=self.train_batches,
                      eval_batches=self.eval_batches, batch_size=self.batch_size)
        if self.budget_n_candidates is not None:
            counts["budget_n_candidates"] = self.budget_n_candidates
        for key, value in counts.items():
            if value < 1:
                raise FinediffError(f"evidence.hard_prompts.{key} must be >= 1, got {value}")


def find_hard_prompts(pair, prompt_PD: torch.Tensor, train_batches: list[dict], eval_batches: list[dict],
                      settings: Optional[HardPromptSettings] = None, kind: str = "kl_ft_base",
                      temperature: float = 1.0, chunk_size: int = 256, seed: int = 0,
                      answers: Optional[AnswerSettings] = None, start_PD: Optional[torch.Tensor] = None,
                      init_texts: tuple[str, ...] = (), on_policy: Optional[list[dict]] = None,
                      progress: bool = True) -> list[HardPrompt]:
    """Run the methods ``settings`` chooses (:class:`HardPromptSettings`, whose fields the
    names below are) from a learned soft prompt; return hard prompts measured on
    ``eval_batches`` (held-out texts), best divergence first. ``kind``, ``temperature``,
    ``chunk_size`` and ``answers`` are the soft prompt's objective.

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
    ``max_perplexity`` is GCG's perplexity budget; ``gcg_own_answers`` scores every GCG
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

    s = settings or HardPromptSettings()
    methods, fluency_weight, n_candidates, max_perplexity = s.methods, s.fluency_weight, s.n_candidates, s.max_perplexity

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
        starts = [ids for ids in (text_prompt_ids(pair.tokenizer, t, s.init_tokens) for t in ranked)
                  if ids is not None][:s.n_starts]
        if starts:
            scores = prompt_objectives(pair, starts, train_batches, kind, temperature, fluency_weight)
            found["text"] = starts[int(scores.argmax())]
    div0 = batches_divergence(pair, None, answered(pair, None, eval_batches, answers), kind, temperature, chunk_size)
    results = {m: evaluate(pair, ids, eval_batches, kind, temperature, fluency_weight, m, chunk_size, div0, answers)
               for m, ids in found.items() if m in methods}
    if "gcg" in methods:
        names = [m for m in found if s.gcg_start == "any" or m in DERIVED]
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
        walk = bool(s.budget_steps and max_perplexity)

        def search_from(ids_P: torch.Tensor, steps: int, top: int, limit: Optional[float], walking: bool):
            n = s.budget_n_candidates if walking and s.budget_n_candidates is not None else n_candidates
            how = GCGSettings(steps, s.top_k, n, top, max_perplexity=limit, own_answers=s.gcg_own_answers,
                              walk=walking, bridging=s.budget_bridging if walking else 0)
            return gcg(pair, ids_P, search or train_batches, allowed, how, kind, temperature, fluency_weight,
                       chunk_size, answers if search is not None else None, seed, progress)

        ids = search_from(start, s.gcg_steps, s.fluent_top, None if walk else max_perplexity, False)
        if walk:  # then into the budget, keeping what it can of the effect
            ids = search_from(ids, s.budget_steps, s.budget_fluent_top, max_perplexity, True)
        results["gcg"] = evaluate(pair, ids, eval_batches, kind, temperature, fluency_weight, "gcg", chunk_size, div0,
                                  answers)
    return sorted(results.values(), key=lambda h: h.divergence, reverse=True)
