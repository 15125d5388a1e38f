"""Logit-difference amplification: sample what the finetune added, more often.

At each step the next token is sampled from

    logits_ft + alpha * (logits_ft - logits_base)

so a behaviour the finetune made slightly more likely becomes much more likely, and a
rare finetuned behaviour shows up in a few samples. ``alpha = 0`` is plain sampling from
the finetuned model. The finetuned model drives ``generate`` (its KV cache, sampling,
temperature and top-p unchanged); the base model follows each step with its own KV cache
inside a logits processor, which HF applies to the raw logits before temperature.
"""

from __future__ import annotations

from typing import Optional

import torch
from tqdm.auto import tqdm

from finediff.arch import cache_kwarg, input_device, output_cache
from finediff.data import format_text
from finediff.errors import FinediffError
from finediff.generation import GENERATE_BATCH, decode_new, prefix_cache, sampling, shared_prefix_batch


class AmplifyLogits:
    """A ``LogitsProcessor``: adds ``alpha * (scores - base logits)`` for the same tokens."""

    def __init__(self, base_model, attention_mask: torch.Tensor, alpha: float, past=None, seen: int = 0):
        """``past``: the base's cache of the first ``seen`` tokens of every row, when already run."""
        self.base, self.alpha = base_model, float(alpha)
        self.mask = attention_mask
        self.past = past
        self.seen = seen
        self.first = True

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.alpha == 0:
            return scores
        new = input_ids[:, self.seen:]
        if not self.first:  # the tokens generated since the last call
            self.mask = torch.cat([self.mask, torch.ones_like(new)], dim=1)
        self.first = False
        position_ids = (self.mask.cumsum(-1) - 1).clamp(min=0)[:, -new.shape[1]:]
        device = input_device(self.base)  # the base may sit on another device (model.placement)
        out = self.base(input_ids=new.to(device), attention_mask=self.mask.to(device),
                        position_ids=position_ids.to(device), use_cache=True, **{cache_kwarg(self.base): self.past})
        self.past, self.seen = output_cache(out), input_ids.shape[1]
        base = out.logits[:, -1].to(scores.device, scores.dtype)
        return scores + self.alpha * (scores - base)


@torch.no_grad()
def amplified_generate(pair, prompts: list[str], alpha: float = 1.0, max_new_tokens: int = 48,
                       batch_size: int = GENERATE_BATCH, temperature: float = 0.7, top_p: float = 1.0,
                       seed: Optional[int] = 0, chat_template: bool = True, progress: bool = True,
                       return_ids: bool = False) -> list:
    """Sample each prompt from the amplified logits (see the module doc); same return
    values as :func:`finediff.generation.generate`."""
    if alpha < 0:
        raise FinediffError(f"amplification alpha must be >= 0, got {alpha}")
    tok = pair.tokenizer
    model = pair.finetuned
    device = input_device(model)
    if seed is not None:
        torch.manual_seed(seed)
    out: list = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc=f"amplified sampling (alpha {alpha:g})", disable=not progress or len(batches) < 2):
        chunk = prompts[start:start + batch_size]
        ids, mask, k = shared_prefix_batch([format_text(tok, p, chat_template) for p in chunk], tok.pad_token_id,
                                           model, max_new_tokens)
        processor = AmplifyLogits(pair.base, mask.to(device), alpha, prefix_cache(pair.base, ids, k), k)
        cache = {cache_kwarg(model): prefix_cache(model, ids, k)} if k else {}
        ids, mask = ids.to(device), mask.to(device)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             pad_token_id=tok.pad_token_id, **sampling(model, temperature, top_p, (processor,)), **cache)
        out += decode_new(tok, gen, ids.shape[1], return_ids)
    return out
