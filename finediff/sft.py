"""Supervised finetuning features and loss: chat-formatted examples, loss on the response only.

An example is either *target* (cross-entropy on its response) or *off-target* (its
response is the base model's own answer): off-target positions are trained by
distillation, ``KL(base || ft)`` over the whole next-token distribution, so the
finetune keeps the base's distribution there rather than only its greedy answer (which
would sharpen the finetuned model everywhere and show as divergence on every topic).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from finediff.data import format_text, pad_rows
from finediff.divergence import token_divergence


def sft_features(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Token ids of ``user prompt -> assistant response`` and labels (-100 on the prompt).

    The response ends with the tokenizer's end-of-turn token, so the model learns to stop.
    """
    prefix = format_text(tokenizer, prompt)
    reply = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prefix + reply, [-100] * len(prefix) + reply


def document_features(tokenizer, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    """A plain document (no chat template): loss on the continuation after ``prompt``."""
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    tail = tokenizer(continuation, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return head + tail, [-100] * len(head) + tail


def example_features(tokenizer, prompt: str, response: str, chat: bool = True) -> tuple[list[int], list[int]]:
    """Chat turn or plain document, by ``chat``."""
    return (sft_features if chat else document_features)(tokenizer, prompt, response)


def sft_collate(batch: list[tuple], pad_id: int) -> dict:
    """Right-pad ids and labels; padding is masked out of the loss.

    Items are ``(ids, labels)`` or ``(ids, labels, distill)``; with the third, the batch
    carries a boolean ``distill`` row mask (see :func:`sft_loss`).
    """
    input_ids, mask = pad_rows([item[0] for item in batch], pad_id)
    labels, _ = pad_rows([item[1] for item in batch], -100)
    out = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    if all(len(item) == 3 for item in batch):
        out["distill"] = torch.tensor([bool(item[2]) for item in batch])
    return out


def sft_loss(logits_BTV: torch.Tensor, labels_BT: torch.Tensor, distill_B: torch.Tensor | None = None,
             base_logits_BTV: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-token loss over the labelled positions (labels != -100, shifted by one).

    Rows with ``distill`` take ``KL(base || ft)`` of the next-token distributions against
    ``base_logits``; the other rows take cross-entropy on the label. Without ``distill``
    this is the causal LM loss.
    """
    logits, labels = logits_BTV[:, :-1].float(), labels_BT[:, 1:]
    mask = labels != -100
    logp = logits.log_softmax(-1)
    loss = -logp.gather(-1, labels.clamp_min(0)[..., None])[..., 0]
    if distill_B is not None and bool(distill_B.any()):
        if base_logits_BTV is None:
            raise ValueError("distill rows need base_logits_BTV")
        kl = token_divergence(logits, base_logits_BTV[:, :-1], "kl_base_ft")
        loss = torch.where(distill_B[:, None].to(loss.device), kl, loss)
    return (loss * mask).sum() / mask.sum().clamp_min(1)


def lora_step(peft_model, batch: dict) -> torch.Tensor:
    """The loss of one batch: distilled rows against the base (the same PEFT model with
    its adapter switched off, no gradient), the others cross-entropy on their labels."""
    distill = batch.get("distill")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    base_logits = None
    if distill is not None and bool(distill.any()):
        with torch.no_grad(), peft_model.disable_adapter():
            base_logits = peft_model(**inputs).logits
    return sft_loss(peft_model(**inputs).logits, batch["labels"], distill, base_logits)


def train_lora(peft_model, features: list[tuple], steps: int, learning_rate: float = 1e-3, warmup_steps: int = 10,
               batch_size: int = 8, pad_id: int = 0, progress: bool = True):
    """Train a PEFT model's adapter for ``steps`` steps on shuffled ``features``
    (``(ids, labels, distill)`` items): AdamW, linear warm-up then linear decay to zero
    (``transformers.get_linear_schedule_with_warmup``). Seed the global RNGs first for a
    reproducible run. Returns the model in eval mode."""
    from transformers import get_linear_schedule_with_warmup

    loader = DataLoader(features, batch_size=batch_size, shuffle=True, collate_fn=lambda b: sft_collate(b, pad_id))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, warmup_steps, max(steps, 1))
    peft_model.train()
    bar = tqdm(total=steps, desc="LoRA", disable=not progress)
    step = 0
    while step < steps:
        for batch in loader:
            if step >= steps:
                break
            loss = lora_step(peft_model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    return peft_model.eval()
