"""The divergent dataset: prompts with both models' generations side by side, scored.

Prompts are the hard prompts (each starting the user message of the highest-divergence
category texts) and the highest-divergence category texts alone. Both models sample
``num_generations_per_prompt`` continuations per prompt (batched, KV cache); each pair is
scored with :mod:`finediff.metrics`. Records follow the seed format exactly:
``{"prompt", "generation_1" (base), "generation_2" (finetuned), "metrics"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from finediff import names
from finediff.amplification import amplified_generate
from finediff.answers import POSITIONS, AnswerSettings, answer_batch
from finediff.data import collate, format_parts, format_text
from finediff.arch import embed_ids, output_head
from finediff.divergence import final_hidden, pair_hidden, token_divergence
from finediff.errors import FinediffError
from finediff.generation import GENERATE_BATCH, generate, logits_batch
from finediff.io import torch_save, write_jsonl
from finediff.metrics import argmax_disagreement, example_metrics, kl_per_position
from finediff.records import DivergentRecord, RecordMetrics


@dataclass
class GenerationConfig:
    """The seed framework's ``generation`` block."""

    max_new_tokens: int = 128
    """New tokens per generation."""
    num_generations_per_prompt: int = 10
    """Samples per prompt and model."""
    temperature: float = 0.7
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.num_generations_per_prompt < 1:
            raise FinediffError("generation.max_new_tokens and generation.num_generations_per_prompt must be >= 1, "
                                f"got {self.max_new_tokens} and {self.num_generations_per_prompt}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise FinediffError(f"generation.temperature must be > 0 and generation.top_p in (0, 1], "
                                f"got {self.temperature} and {self.top_p}")


@torch.no_grad()
def text_divergences(pair, texts: list[str], prompt: Optional[torch.Tensor] = None, batch_size: int = 8,
                     kind: str = "kl_ft_base", max_length: Optional[int] = None, progress: bool = False,
                     answers: Optional[AnswerSettings] = None) -> list[float]:
    """Mean divergence of the pair on each text (optionally with a prompt spliced in); with
    ``answers``, over the answer the finetuned model gives to the text with the prompt in
    place (the answer objective, :mod:`finediff.answers`)."""
    heads = output_head(pair.finetuned), output_head(pair.base)
    out: list[float] = []
    for i in tqdm(range(0, len(texts), batch_size), desc="scoring texts", disable=not progress):
        b = collate([format_parts(pair.tokenizer, t) for t in texts[i:i + batch_size]], pair.tokenizer.pad_token_id,
                    max_length)
        if answers is not None:
            b = answer_batch(pair, b, prompt, answers)
        h_ft, h_base, mask = pair_hidden(pair, b["input_ids"], b["attention_mask"], prompt, b["prompt_pos"],
                                         b.get("score_mask"))
        n = min(batch_size, len(texts) - i)  # faithful answers: one copy of the rows per writer
        sums, counts = [0.0] * n, [0] * n
        for r in range(mask.shape[0]):
            div = token_divergence(heads[0](h_ft[r, mask[r]]), heads[1](h_base[r, mask[r]]), kind,
                                   exclude=b.get("exclude"))
            sums[r % n] += float(div.sum())
            counts[r % n] += div.numel()
        out += [total / count if count else 0.0 for total, count in zip(sums, counts)]
    return out




def score_texts(pair, texts: list[str], positions: str = "response", max_new_tokens: int = 32,
                max_length: Optional[int] = None, batch_size: int = 8, progress: bool = False,
                kind: str = "kl_ft_base") -> list[float]:
    """The pair's divergence on each text, in order: ``positions="response"`` over the
    finetuned model's greedy answer (:func:`response_divergences`), ``"text"`` over the
    text itself (:func:`text_divergences`)."""
    if positions == "response":
        return response_divergences(pair, texts, max_new_tokens, batch_size, kind, progress)
    if positions == "text":
        return text_divergences(pair, texts, batch_size=batch_size, kind=kind, max_length=max_length,
                                progress=progress)
    raise FinediffError(f"unknown positions {positions!r}; choose {' or '.join(POSITIONS)}")


def rank_texts(pair, texts: list[str], positions: str = "response", max_new_tokens: int = 32,
               max_length: Optional[int] = None, batch_size: int = 8, progress: bool = True,
               kind: str = "kl_ft_base") -> list[tuple[float, str]]:
    """``(divergence, text)`` for every text, highest first (see :func:`score_texts`)."""
    scores = score_texts(pair, texts, positions, max_new_tokens, max_length, batch_size, progress, kind)
    return sorted(zip(scores, texts), key=lambda x: -x[0])


def with_hard_prompt(hard_text: str, text: str) -> str:
    """The user message that starts with a hard prompt."""
    return f"{hard_text.strip()} {text}"


def dataset_prompts(hard_texts: list[str], ranked_texts: list[str], n_hard: int, per_hard: int,
                    n_texts: int) -> list[str]:
    """The divergent dataset's prompts: each of the ``n_hard`` best distinct hard prompts
    starting the ``per_hard`` highest-divergence texts (a text the hard prompt already is
    is skipped for the next), then the ``n_texts`` highest-divergence texts alone."""
    prompts = []
    for hard in list(dict.fromkeys(h.strip() for h in hard_texts if h.strip()))[:n_hard]:
        texts = [t for t in ranked_texts if t.strip() != hard][:per_hard]
        prompts += [with_hard_prompt(hard, t) for t in texts]
    return prompts + ranked_texts[:n_texts]


def teacher_forced(pair, prompts: list[str], responses: list[list[int]], batch_size: int = 8,
                   progress: bool = False, desc: str = "scoring generations"):
    """Teacher-force both models on ``prompt + response`` (user turn under the chat
    template); yield ``(logits_ft, logits_base)`` at the positions that predict each
    response token, one pair of ``[R, V]`` tensors per prompt, in order."""
    yield from zip(forced_logits(pair.finetuned, pair.tokenizer, prompts, responses, batch_size, progress, desc),
                   forced_logits(pair.base, pair.tokenizer, prompts, responses, batch_size))


def forced_logits(model, tokenizer, prompts: list[str], responses: list[list[int]], batch_size: int = 8,
                  progress: bool = False, desc: str = "scoring answers"):
    """Like :func:`teacher_forced`, for one model: yield its logits ``[R, V]`` at the
    positions that predict each response token, one tensor per prompt, in order."""
    head = output_head(model)
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress):
        prompt_ids = [format_text(tokenizer, p) for p in prompts[i:i + batch_size]]
        b = collate([p + g for p, g in zip(prompt_ids, responses[i:i + batch_size])], tokenizer.pad_token_id)
        with torch.no_grad():  # grad mode is restored before each yield
            h = final_hidden(model, embed_ids(model, b["input_ids"]), b["attention_mask"])
            out = [head(h[r, len(p) - 1:len(p) - 1 + len(g)])
                   for r, (p, g) in enumerate(zip(prompt_ids, responses[i:i + batch_size]))]
        yield from out


def answered(pair, texts: list[str], max_new_tokens: int, batch_size: int = 8, progress: bool = False):
    """The finetuned model answers each text greedily, and the base is teacher-forced on the
    answer; yield ``(text, ids, logits_ft, logits_base)`` per text, in order. The finetuned logits are
    the generation's own, so the finetuned model runs over each answer once; texts go in
    batches whose logits fit :data:`~finediff.generation.LOGITS_BUDGET`."""
    chunk = logits_batch(pair.finetuned, max_new_tokens)
    torch.manual_seed(0)  # the random state after it, as generate() leaves it
    starts = range(0, len(texts), chunk)
    for start in tqdm(starts, desc="answering", disable=not progress or len(starts) < 2):
        part = texts[start:start + chunk]
        gens = generate(pair.finetuned, pair.tokenizer, part, max_new_tokens=max_new_tokens, batch_size=chunk,
                        seed=None, progress=False, return_logits=True)
        forced = forced_logits(pair.base, pair.tokenizer, part, [ids for _, ids, _ in gens], batch_size)
        for (text, ids, lf), lb in zip(gens, forced):
            yield text, ids, lf.to(lb.device), lb


def score_pairs(pair, prompts: list[str], gens_base: list[list[int]], gens_ft: list[list[int]],
                batch_size: int = 8, progress: bool = True) -> list[RecordMetrics]:
    """Teacher-force both models on ``prompt + generation_2``; per-record metrics."""
    return [example_metrics(kl_per_position(lf, lb), argmax_disagreement(lf, lb), gb, gf)
            for (lf, lb), gb, gf in zip(teacher_forced(pair, prompts, gens_ft, batch_size, progress),
                                        gens_base, gens_ft)]


def response_divergences(pair, texts: list[str], max_new_tokens: int = 32, batch_size: int = 8,
                         kind: str = "kl_ft_base", progress: bool = False) -> list[float]:
    """Mean divergence of the pair over each text's *response*: the finetuned model answers
    the text greedily (up to ``max_new_tokens``), both models are teacher-forced on that
    answer, and the divergence is averaged over the answer's positions.

    A finetune mostly changes what the model says, not how it reads the question, so this
    is where a narrow change shows; :func:`text_divergences` scores the question instead.
    """
    out = []
    for _, _, lf, lb in answered(pair, texts, max_new_tokens, batch_size, progress):
        div = token_divergence(lf, lb, kind)
        out.append(float(div.mean()) if div.numel() else 0.0)
    return out


def generate_dataset(pair, prompts: list[str], config: GenerationConfig, seed: int = 0,
                     batch_size: int = GENERATE_BATCH, progress: bool = True) -> list[DivergentRecord]:
    """Sample both models on every prompt and score each generation pair (seed format),
    sorted by ``kl_divergence``, highest first."""
    expanded = [p for p in prompts for _ in range(config.num_generations_per_prompt)]
    kwargs = dict(max_new_tokens=config.max_new_tokens, batch_size=batch_size, do_sample=True,
                  temperature=config.temperature, top_p=config.top_p, return_ids=True, progress=progress)
    base = generate(pair.base, pair.tokenizer, expanded, seed=seed, **kwargs)
    ft = generate(pair.finetuned, pair.tokenizer, expanded, seed=seed, **kwargs)
    metrics = score_pairs(pair, expanded, [ids for _, ids in base], [ids for _, ids in ft], progress=progress)
    records = [DivergentRecord(p, b[0], f[0], m) for p, b, f, m in zip(expanded, base, ft, metrics)]
    return sorted(records, key=lambda r: r.metrics.kl_divergence, reverse=True)


def generate_amplified(pair, prompts: list[str], config: GenerationConfig, alpha: float, per_prompt: int,
                       seed: int = 0, batch_size: int = GENERATE_BATCH, progress: bool = True) -> list[DivergentRecord]:
    """Like :func:`generate_dataset`, with ``generation_2`` sampled from the amplified
    logits (:func:`finediff.amplification.amplified_generate`); records marked with ``alpha``."""
    expanded = [p for p in prompts for _ in range(per_prompt)]
    kwargs = dict(max_new_tokens=config.max_new_tokens, batch_size=batch_size, temperature=config.temperature,
                  top_p=config.top_p, return_ids=True, progress=progress)
    base = generate(pair.base, pair.tokenizer, expanded, seed=seed, do_sample=True, **kwargs)
    amp = amplified_generate(pair, expanded, alpha, seed=seed, **kwargs)
    metrics = score_pairs(pair, expanded, [ids for _, ids in base], [ids for _, ids in amp], progress=progress)
    records = [DivergentRecord(p, b[0], f[0], m, alpha) for p, b, f, m in zip(expanded, base, amp, metrics)]
    return sorted(records, key=lambda r: r.metrics.kl_divergence, reverse=True)


def save_dataset(records: list[DivergentRecord], output_dir: str | Path) -> None:
    """Write ``divergent_dataset.pt`` (plain dicts, ``torch.load(..., weights_only=True)``)
    and ``divergent_dataset.jsonl``, atomically."""
    rows = [r.as_dict() for r in records]
    torch_save(Path(output_dir) / names.DIVERGENT_DATASET_PT, rows)
    write_jsonl(Path(output_dir) / names.DIVERGENT_DATASET_JSONL, rows)
