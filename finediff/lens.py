"""Activation Difference Lens (ADL): read a narrow finetune's trace from the activations.

On the first :data:`N_POSITIONS` tokens of generic text (unrelated to the finetune), the mean
difference ``d_p = mean(h_ft - h_base)`` of the residual stream at a layer points at the
finetuning domain. Layers are given as relative depths, ``int(depth * (num_layers - 1))``;
the default reads two: the paper's 0.5 and the last layer (1.0). On small models the
middle layer's logit lens reads sub-word fragments for base, finetuned and difference
alike (measured on the shipped 135M pair: 30 layers, layer 14), while the last layer's
reads the finetuning domain (" Rome", " Italians" for the Eiffel-Tower-in-Rome organism;
"Sorry", " Astronomy" for the astronomy-unlearning one). Each layer is read four ways:

* **logit lens**: ``+d_p`` and ``-d_p`` through the finetuned model's final norm and
  unembedding; top tokens with probabilities;
* **Patchscope**: ``d_p`` rescaled to ``scale x`` the finetuned model's mean activation
  norm replaces the residual stream at the same layer, last position, of an identity
  prompt (``man -> man\\n1135 -> 1135\\nhello -> hello\\n?``); the next-token distribution
  is read for each scale of a sweep. The scale is chosen automatically: the one whose top
  tokens carry the most probability mass *new* with respect to the unpatched prompt's top
  tokens (the patch says most while the readout stays a distribution over words);
* **steering**: the norm-matched ``d_p`` times a strength is added at every position of
  that layer while the finetuned model generates; the largest strength whose samples stay
  coherent is kept. The judge is the base model: mean perplexity at most
  :data:`COHERENCE_FACTOR` x the unsteered samples', and, since a repetition loop ("Game Game
  Game ...") has a *low* perplexity, a mean share of distinct tokens per sample at least
  ``distinct_factor`` x the unsteered samples'. Strengths are tried in increasing order
  and the sweep stops after two incoherent ones in a row. The steering vector is the mean
  difference over positions 1..P-1 (position 0 is the attention-sink token, outsized in
  both models);
* **token relevance**: share of the top tokens that are among the most frequent
  non-generic tokens of the organism's finetuning data, for ``d_p`` and, as controls, for
  the base mean and the finetuned mean activations (read through the same logit lens),
  each reported per position and as the maximum over positions.

The activation norm used for rescaling is each model's mean L2 norm at the layer over
positions ``>= 5`` of generic texts (the first positions have outsized norms).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from tqdm.auto import tqdm

from finediff import names
from finediff.activations import pair_activations, relative_layer, residual_stream, tokenize_first
from finediff.arch import decoder_layers, final_norm, input_device, output_head
from finediff.errors import FinediffError
from finediff.generation import generate_mixed
from finediff.records import LensLayer, LensPosition, LensSummary, Steering

IDENTITY_PROMPT = "man -> man\n1135 -> 1135\nhello -> hello\n?"
N_POSITIONS = 5
"""First tokens of each generic text whose mean activation difference is read."""
MIN_TOKENS = 128
"""Generic texts shorter than this many tokens are left out."""
TOP_K = 20
"""Top tokens read per logit lens and Patchscope readout (the Patchscope's novelty is counted over them)."""
DEFAULT_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
"""Patchscope's sweep: the difference rescaled to each of these times the finetuned model's mean activation norm."""
DEFAULT_STRENGTHS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""Steering strengths tried, in increasing order, times the finetuned model's mean activation norm."""
COHERENCE_FACTOR = 2.0
"""Steered samples' base perplexity may be at most this many times the unsteered ones'."""
RELEVANCE_TOP_N = 100
"""Most frequent non-generic tokens of the finetuning data that token relevance counts."""
STEER_CATEGORY = "general"
"""Prompts to steer on when there is no organism with held-out off-target prompts."""


@dataclass
class LensStats:
    """Mean activations of both models at one layer on generic text."""

    layer: int
    diff_PD: torch.Tensor
    """Mean ``h_ft - h_base`` per position ``[P, D]``."""
    base_mean_PD: torch.Tensor
    ft_mean_PD: torch.Tensor
    base_norm: float
    """Base model's mean activation norm at the layer (positions >= 5)."""
    ft_norm: float
    """Finetuned model's mean activation norm at the layer (positions >= 5)."""
    n_texts: int


@torch.no_grad()
def mean_norm(model, ids_NT: torch.Tensor, layer: int, skip: int = 5, batch_size: int = 16) -> float:
    total, count = 0.0, 0
    for i in range(0, len(ids_NT), batch_size):
        ids = ids_NT[i:i + batch_size]
        acts = residual_stream(model, ids, torch.ones_like(ids), [layer])[layer][:, skip:]
        total += acts.norm(dim=-1).sum().item()
        count += acts.shape[0] * acts.shape[1]
    return total / max(count, 1)


def adl_statistics(pair, texts: list[str], layer: int, n_positions: int = N_POSITIONS, min_tokens: int = MIN_TOKENS,
                   max_texts: int = 10_000, norm_texts: int = 64, norm_positions: int = 128,
                   batch_size: int = 64, progress: bool = True) -> LensStats:
    """Mean difference, means and norms at ``layer`` over the first ``n_positions`` tokens."""
    ids = tokenize_first(pair.tokenizer, texts[:max_texts], max(n_positions, norm_positions), min_tokens)
    sums = {k: torch.zeros(n_positions, pair.hidden_size) for k in ("base", "finetuned")}
    for batch in pair_activations(pair, ids[:, :n_positions], [layer], batch_size, progress):
        for side in sums:
            sums[side] += batch[names.activation_key(side, layer)].sum(0)
    n = len(ids)
    base_mean, ft_mean = sums["base"] / n, sums["finetuned"] / n
    norm_ids = ids[:norm_texts, :norm_positions]
    return LensStats(layer, ft_mean - base_mean, base_mean, ft_mean, mean_norm(pair.base, norm_ids, layer),
                     mean_norm(pair.finetuned, norm_ids, layer), n)


@torch.no_grad()
def logit_lens(model, tokenizer, vec_D: torch.Tensor, k: int = TOP_K) -> list[tuple[str, float]]:
    """Top tokens of ``vec_D`` read through the model's final norm and unembedding."""
    norm = final_norm(model)
    weight = next(model.parameters())
    logits = output_head(model)(norm(vec_D.to(weight.device, weight.dtype)[None]))[0].float()
    probs = logits.softmax(-1)
    top = probs.topk(k)
    return [(tokenizer.decode([i]), round(p, 6)) for p, i in zip(top.values.tolist(), top.indices.tolist())]


class Patch:
    """Forward hook: replace (``mode="replace"``, last position) or add (``mode="add"``,
    every position) a vector at a decoder layer's output."""

    def __init__(self, model, layer: int, vec_D: torch.Tensor, mode: str):
        self.block, self.vec, self.mode, self.handle = decoder_layers(model)[layer], vec_D, mode, None

    def __enter__(self):
        def hook(_m, _i, output):
            hidden = output[0] if isinstance(output, tuple) else output
            vec = self.vec.to(hidden.device, hidden.dtype)
            if self.mode == "replace":
                hidden = hidden.clone()
                hidden[:, -1] = vec
            else:
                hidden = hidden + vec
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        self.handle = self.block.register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@torch.no_grad()
def _next_token_probs(model, tokenizer, prompt: str) -> torch.Tensor:
    ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=input_device(model))
    return model(input_ids=ids).logits[0, -1].float().softmax(-1)


def patchscope(model, tokenizer, vec_D: torch.Tensor, layer: int, norm: float, scales=DEFAULT_SCALES,
               k: int = TOP_K, prompt: str = IDENTITY_PROMPT) -> dict:
    """Patch ``scale * norm * vec/|vec|`` at the last position of the identity prompt.

    Returns ``{"scales": {scale: [(token, prob), ...]}, "chosen_scale", "tokens"}``.
    """
    clean = _next_token_probs(model, tokenizer, prompt)
    clean_top = set(clean.topk(k).indices.tolist())
    unit = vec_D / vec_D.norm().clamp_min(1e-8)
    per_scale, novelty = {}, {}
    for scale in scales:
        with Patch(model, layer, unit * norm * scale, "replace"):
            probs = _next_token_probs(model, tokenizer, prompt)
        top = probs.topk(k)
        per_scale[scale] = [(tokenizer.decode([i]), round(p, 6)) for p, i in zip(top.values.tolist(), top.indices.tolist())]
        novelty[scale] = sum(p for p, i in zip(top.values.tolist(), top.indices.tolist()) if i not in clean_top)
    chosen = max(scales, key=lambda s: novelty[s])
    return {"scales": {str(s): v for s, v in per_scale.items()}, "novelty": {str(s): round(v, 6) for s, v in novelty.items()},
            "chosen_scale": chosen, "tokens": per_scale[chosen]}


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str]) -> list[float]:
    """Per-text perplexity under ``model`` (plain text)."""
    out = []
    for t in texts:
        ids = tokenizer(t)["input_ids"]
        if len(ids) < 2:
            out.append(float("inf"))
            continue
        x = torch.tensor([ids], device=input_device(model))
        out.append(math.exp(model(input_ids=x, labels=x).loss.item()))
    return out


def _generate(model, tokenizer, prompts: list[str], max_new_tokens: int, chat: Optional[list[bool]]) -> list[str]:
    return generate_mixed(model, tokenizer, prompts, chat if chat is not None else [True] * len(prompts),
                          max_new_tokens=max_new_tokens, progress=False)


def steer(model, tokenizer, vec_D: torch.Tensor, layer: int, norm: float, strength: float, prompts: list[str],
          max_new_tokens: int = 48, chat: Optional[list[bool]] = None) -> list[str]:
    """Generate with ``strength * norm * vec/|vec|`` added at every position of ``layer``
    (``chat``: per prompt, chat turn or plain document continuation; default all chat)."""
    unit = vec_D / vec_D.norm().clamp_min(1e-8)
    with Patch(model, layer, unit * norm * strength, "add"):
        return _generate(model, tokenizer, prompts, max_new_tokens, chat)


def distinct_share(tokenizer, texts: list[str]) -> float:
    """Mean share of distinct token ids per text (1 = no token repeats; a loop -> near 0)."""
    shares = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        shares.append(len(set(ids)) / len(ids) if ids else 0.0)
    return sum(shares) / max(len(shares), 1)


def search_steering(pair, vec_D: torch.Tensor, layer: int, norm: float, prompts: list[str],
                    strengths=DEFAULT_STRENGTHS, coherence_factor: float = COHERENCE_FACTOR, max_new_tokens: int = 48,
                    progress: bool = True, unsteered: Optional[list[str]] = None,
                    distinct_factor: float = 0.5, chat: Optional[list[bool]] = None, patience: int = 2) -> dict:
    """Largest strength whose steered samples stay coherent by the base model's judgement.

    Coherent means: mean base perplexity of the steered samples at most
    ``coherence_factor`` x that of the unsteered samples, and mean distinct-token share
    at least ``distinct_factor`` x theirs (repetition loops have a low perplexity).
    Strengths are tried in increasing order; the sweep stops after ``patience``
    incoherent strengths in a row. Returns the chosen strength, the per-strength perplexities and distinct shares, and
    the steered and unsteered samples. ``unsteered``: the finetuned model's greedy samples
    on ``prompts`` when already generated; ``chat`` as for :func:`steer`.
    """
    model, tok = pair.finetuned, pair.tokenizer
    if unsteered is None:
        unsteered = _generate(model, tok, prompts, max_new_tokens, chat)
    ref = _mean_finite(perplexity(pair.base, tok, unsteered))
    threshold, min_distinct = coherence_factor * ref, distinct_factor * distinct_share(tok, unsteered)
    table, distinct, chosen, chosen_samples, misses = {}, {}, 0.0, unsteered, 0
    for s in tqdm(sorted(strengths), desc="steering", disable=not progress):
        samples = steer(model, tok, vec_D, layer, norm, s, prompts, max_new_tokens, chat)
        ppl, share = _mean_finite(perplexity(pair.base, tok, samples)), distinct_share(tok, samples)
        table[str(s)], distinct[str(s)] = round(ppl, 3), round(share, 3)
        if ppl <= threshold and share >= min_distinct:
            chosen, chosen_samples, misses = s, samples, 0
        else:
            misses += 1
            if misses >= patience:  # stronger steering only breaks the text further
                break
    return {"chosen_strength": chosen, "threshold_perplexity": round(threshold, 3),
            "unsteered_perplexity": round(ref, 3), "perplexity_by_strength": table,
            "min_distinct_share": round(min_distinct, 3), "distinct_share_by_strength": distinct,
            "prompts": prompts, "steered": chosen_samples, "unsteered": unsteered}


def _mean_finite(values: list[float]) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else float("inf")


# --------------------------------------------------------------------------- relevance

_WORD = re.compile(r"[a-z][a-z']{2,}")


def _norm_token(token: str) -> Optional[str]:
    t = token.strip().lower()
    return t if _WORD.fullmatch(t) else None


def relevant_tokens(tokenizer, finetune_texts: list[str], generic_texts: list[str], top_n: int = RELEVANCE_TOP_N,
                    generic_top: int = 1000) -> list[str]:
    """The most frequent non-generic word tokens of the finetuning data.

    Tokens (lower-cased, stripped, alphabetic, 3+ letters) are counted in the finetuning
    texts; the ``generic_top`` most frequent tokens of the generic corpus are removed;
    the ``top_n`` most frequent remaining ones are returned.
    """
    def count(texts):
        c = Counter()
        for t in texts:
            for i in tokenizer(t, add_special_tokens=False)["input_ids"]:
                w = _norm_token(tokenizer.decode([i]))
                if w:
                    c[w] += 1
        return c

    generic = {w for w, _ in count(generic_texts).most_common(generic_top)}
    return [w for w, _ in count(finetune_texts).most_common() if w not in generic][:top_n]


def token_relevance(tokens: list[tuple[str, float]], relevant: list[str]) -> float:
    """Share of ``tokens`` whose normalised form is among the ``relevant`` ones."""
    rel = set(relevant)
    return sum(1 for t, _ in tokens if _norm_token(t) in rel) / max(len(tokens), 1)


# --------------------------------------------------------------------------- the whole lens


@dataclass
class LensConfig:
    """Settings of one ADL run (the ``evidence.lens`` config block) -> lens/lens.json and plots."""

    generic: str = ""
    """Category spec of the generic text: a ``.jsonl`` path or ``hub:<dataset>[:config][:split][@field]``
    (empty: the shipped corpus)."""
    layers: List[float] = field(default_factory=lambda: [0.5, 1.0])
    """Relative depths (0..1) of the layers to read: ``int(depth * (num_layers - 1))`` (see the
    module docstring); the default is the paper's middle layer and the last."""
    max_texts: int = 1000
    """Generic texts read (those shorter than :data:`MIN_TOKENS` tokens are then left out)."""
    max_new_tokens: int = 48
    """New tokens per steered and unsteered sample."""
    n_steer_prompts: int = 12
    """Prompts the steering search samples on."""

    def __post_init__(self):
        self.layers = [float(x) for x in self.layers]
        for depth in self.layers:
            relative_layer(2, depth)  # a one-line error for a depth outside [0, 1]
        if self.max_texts < 1:
            raise FinediffError(f"evidence.lens.max_texts must be >= 1, got {self.max_texts}")


def run_lens(pair, generic_texts: list[str], steer_prompts: list[str], config: LensConfig,
             finetune_texts: Optional[list[str]] = None, progress: bool = True,
             steer_chat: Optional[list[bool]] = None) -> LensSummary:
    """ADL on every configured layer (see module docstring).
    ``steer_chat``: per steering prompt, chat turn (True, the default) or plain document."""
    tok = pair.tokenizer
    relevant = relevant_tokens(tok, finetune_texts, generic_texts, RELEVANCE_TOP_N) if finetune_texts else []
    summary = LensSummary(relevant_tokens=relevant)
    unsteered = (_generate(pair.finetuned, tok, steer_prompts, config.max_new_tokens, steer_chat)
                 if steer_prompts else None)
    for depth in config.layers:
        layer = relative_layer(pair.num_layers, depth)
        stats = adl_statistics(pair, generic_texts, layer, N_POSITIONS, MIN_TOKENS, config.max_texts, progress=progress)
        positions = []
        for p in range(N_POSITIONS):
            diff = stats.diff_PD[p]
            entry = LensPosition(
                position=p, diff_norm=round(diff.norm().item(), 5),
                logit_lens_pos=logit_lens(pair.finetuned, tok, diff, TOP_K),
                logit_lens_neg=logit_lens(pair.finetuned, tok, -diff, TOP_K),
                base_mean_lens=logit_lens(pair.finetuned, tok, stats.base_mean_PD[p], TOP_K),
                ft_mean_lens=logit_lens(pair.finetuned, tok, stats.ft_mean_PD[p], TOP_K),
                patchscope=patchscope(pair.finetuned, tok, diff, layer, stats.ft_norm, DEFAULT_SCALES, TOP_K))
            if relevant:
                entry.relevance = {
                    "difference_logit_lens": token_relevance(entry.logit_lens_pos, relevant),
                    "difference_patchscope": token_relevance(entry.patchscope["tokens"], relevant),
                    "base_mean": token_relevance(entry.base_mean_lens, relevant),
                    "finetuned_mean": token_relevance(entry.ft_mean_lens, relevant),
                }
            positions.append(entry)
        relevance = ({key: max(e.relevance[key] for e in positions) for key in positions[0].relevance}
                     if relevant else {})
        # Steer with the mean difference over positions 1.. (position 0 is the attention-sink
        # token, whose activations are outsized in both models).
        steer_vec = stats.diff_PD[1:].mean(0) if N_POSITIONS > 1 else stats.diff_PD[0]
        steering = Steering(**search_steering(pair, steer_vec, layer, stats.ft_norm, steer_prompts, DEFAULT_STRENGTHS,
                                              COHERENCE_FACTOR, config.max_new_tokens, progress,
                                              unsteered, chat=steer_chat)) if steer_prompts else None
        summary.layers[str(layer)] = LensLayer(
            relative_depth=depth, n_texts=stats.n_texts, base_norm=stats.base_norm, ft_norm=stats.ft_norm,
            positions=positions, relevance_max_over_positions=relevance, steering=steering,
            steering_vector=[round(v, 6) for v in steer_vec.tolist()])
    return summary
