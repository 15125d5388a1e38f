"""Batched generation with the KV cache (left padding), for one model or a pair."""

from __future__ import annotations

from typing import Optional

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from finediff.arch import cache_kwarg, embed_ids, input_device, output_cache
from finediff.data import format_parts, format_text, pad_rows
from finediff.soft_prompt import splice


GENERATE_BATCH = 32
"""Prompts per ``generate`` call: 32 generates 22% faster than 16 on the 2-core CPU
(64 prompts, 24 new tokens, Gemma-3-270M; benchmarks/sampling.py, docs/results.md#speed-and-memory)."""
DEFAULT_TOP_K = 50
"""transformers' top-k for sampling when the model's generation config sets none."""
LOGITS_BUDGET = 2 ** 28
"""Logits kept at once by ``generate(return_logits=True)`` (1 GiB of float32): a batch holds at
most this many ``new tokens x vocabulary`` values, and is split when it would hold more."""


class Sample(LogitsProcessor):
    """Sampling as the last logits processor of a greedy ``generate``: temperature, top-k,
    top-p (as transformers' warpers, in that order), then one draw among the kept tokens;
    only the drawn token stays finite, so the greedy step takes it. The distribution is
    ``generate(do_sample=True)``'s, without ``torch.multinomial`` drawing a random number for
    every token of the vocabulary (a third of a sampled step's time at 262k tokens)."""

    def __init__(self, temperature: float = 1.0, top_k: int = DEFAULT_TOP_K, top_p: float = 1.0):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.temperature
        k = scores.shape[-1] if not self.top_k else min(self.top_k, scores.shape[-1])
        values, index = scores.topk(k, dim=-1)  # sorted, highest first
        if self.top_p < 1.0:  # the smallest set of tokens whose mass reaches top_p (at least one)
            probs = values.softmax(-1)
            values = values.masked_fill(probs.cumsum(-1) - probs >= self.top_p, -float("inf"))
        token = index.gather(-1, torch.multinomial(values.softmax(-1), 1))
        return torch.full_like(scores, -float("inf")).scatter_(-1, token, 0.0)


def sampling(model, temperature: float = 1.0, top_p: float = 1.0, processors: tuple = (), sample: bool = True) -> dict:
    """``model.generate`` keyword arguments that sample (:class:`Sample`) after ``processors``,
    with the top-k of the model's generation config; ``sample=False``: greedy."""
    if not sample:
        return dict(do_sample=False)
    top_k = getattr(getattr(model, "generation_config", None), "top_k", None)
    sample = Sample(temperature, DEFAULT_TOP_K if top_k is None else top_k, top_p)
    return dict(do_sample=False, logits_processor=LogitsProcessorList([*processors, sample]))


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 48,
    batch_size: int = GENERATE_BATCH,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    chat_template: bool = True,
    seed: Optional[int] = 0,
    progress: bool = True,
    return_ids: bool = False,
    return_logits: bool = False,
) -> list:
    """Generate a continuation for each prompt (user turn under the chat template).

    Batches of ``batch_size`` prompts share one ``generate`` call with the KV cache.
    Returns the decoded texts, or ``(text, token_ids)`` pairs with ``return_ids`` (ids end
    before the first end-of-sequence or padding token), or ``(text, token_ids, logits)``
    with ``return_logits``: the model's own logits ``[len(token_ids), V]`` (float32, before
    any sampling) at the positions that predict each new token, the ones teacher forcing on
    the answer would give, so that a caller never runs the model over its answer again.
    """
    device = input_device(model)
    out: list = []
    if seed is not None:
        torch.manual_seed(seed)
    if return_logits:
        batch_size = logits_batch(model, max_new_tokens, batch_size)
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="generating", disable=not progress or len(batches) < 2):
        chunk = prompts[start:start + batch_size]
        ids, mask, k = shared_prefix_batch([format_text(tokenizer, p, chat_template) for p in chunk],
                                           tokenizer.pad_token_id, model, max_new_tokens)
        kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                      **sampling(model, temperature, top_p, sample=do_sample))
        if k:
            kwargs[cache_kwarg(model)] = prefix_cache(model, ids, k)
        if not return_logits:
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
            out += decode_new(tokenizer, gen, ids.shape[1], return_ids)
            continue
        res = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), output_logits=True,
                             return_dict_in_generate=True, **kwargs)
        logits = torch.stack(res.logits, 1).float().cpu()  # [B, new tokens, V]
        out += [(text, g, logits[r, :len(g)]) for r, (text, g) in
                enumerate(decode_new(tokenizer, res.sequences, ids.shape[1], True))]
    return out


def shared_prefix_batch(rows: list[list[int]], pad_id: int, model=None,
                        max_new_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One ``generate`` batch: ``(ids, mask, k)``. The ``k`` leading tokens every row shares
    (a chat template's system turn; :data:`~finediff.divergence.SHARED_PREFIX_MIN` or more)
    come first, then each row's own tokens, padded on their left (the positions count only
    the unpadded tokens, as ``generate`` derives them from the mask); :func:`prefix_cache`
    runs the shared tokens once for the whole batch. Fewer shared, or a ``model`` whose
    sliding-window layers would not see the whole sequence (their window counts the padding
    between the shared tokens and a row's own): left padding, ``k = 0``."""
    from finediff.divergence import SHARED_PREFIX_MIN

    window = getattr(getattr(model, "config", None), "sliding_window", None)
    k = 0
    if len(rows) > 1 and not (window and max(len(r) for r in rows) + max_new_tokens > window):
        shortest = min(len(r) for r in rows) - 1
        while k < shortest and all(r[k] == rows[0][k] for r in rows):
            k += 1
    if k < SHARED_PREFIX_MIN:
        ids, mask = pad_rows(rows, pad_id, left=True)
        return ids, mask, 0
    rest, rest_mask = pad_rows([r[k:] for r in rows], pad_id, left=True)
    ids = torch.cat([torch.tensor([rows[0][:k]]).expand(len(rows), -1), rest], 1)
    return ids, torch.cat([torch.ones(len(rows), k, dtype=rest_mask.dtype), rest_mask], 1), k


@torch.no_grad()
def prefix_cache(model, ids: torch.Tensor, k: int):
    """The keys and values of the ``k`` leading tokens all rows of ``ids`` share, run once and
    repeated for every row (None when ``k`` is 0)."""
    if not k:
        return None
    cache = output_cache(model(input_ids=ids[:1, :k].to(input_device(model)), use_cache=True))
    cache.batch_repeat_interleave(ids.shape[0])
    return cache


def logits_batch(model, max_new_tokens: int, batch_size: int = GENERATE_BATCH) -> int:
    """Prompts per batch whose new tokens' logits fit :data:`LOGITS_BUDGET` (at most ``batch_size``)."""
    vocab = model.get_output_embeddings().weight.shape[0]
    return max(1, min(batch_size, LOGITS_BUDGET // max(1, max_new_tokens * vocab)))


def decode_new(tokenizer, gen: torch.Tensor, prompt_len: int, return_ids: bool = False) -> list:
    """The new tokens of each ``generate`` row, decoded (ids end before the first
    end-of-sequence or padding token): texts, or ``(text, ids)`` pairs."""
    out = []
    for g in gen[:, prompt_len:].tolist():
        stop = [i for i, t in enumerate(g) if t in (tokenizer.eos_token_id, tokenizer.pad_token_id)]
        g = g[: stop[0]] if stop else g
        text = tokenizer.decode(g, skip_special_tokens=True).strip()
        out.append((text, g) if return_ids else text)
    return out


def generate_mixed(model, tokenizer, prompts: list[str], chat: list[bool], **kwargs) -> list[str]:
    """Like :func:`generate`, with a per-prompt choice of chat template (True) or plain
    document continuation (False); the output keeps the input order."""
    out: list[str] = [""] * len(prompts)
    for flag in (True, False):
        idx = [i for i, c in enumerate(chat) if c == flag]
        if idx:
            gens = generate(model, tokenizer, [prompts[i] for i in idx], chat_template=flag, **kwargs)
            for i, g in zip(idx, gens):
                out[i] = g
    return out


@torch.no_grad()
def generate_one(model, tokenizer, text: str, prompt_PD: Optional[torch.Tensor] = None, max_new_tokens: int = 64,
                 do_sample: bool = False, temperature: float = 0.7, top_p: float = 1.0, seed: int = 0) -> str:
    """Answer one user message, optionally with a soft prompt at the start of the message
    (spliced into the input embeddings exactly as in training)."""
    prefix, body = format_parts(tokenizer, text)
    ids = torch.tensor([prefix + body])
    mask = torch.ones_like(ids)
    embeds = embed_ids(model, ids)
    embeds, mask = splice(None if prompt_PD is None else prompt_PD.to(embeds.device), embeds, mask.to(embeds.device), torch.tensor([len(prefix)]))
    torch.manual_seed(seed)
    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                  **sampling(model, temperature, top_p, sample=do_sample))
    out = model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
    return tokenizer.decode(out[0], skip_special_tokens=True).strip()
