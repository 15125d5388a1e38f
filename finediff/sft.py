"""Supervised finetuning features and loss: chat-formatted examples, loss on the response only.

An example is either *target* (cross-entropy on its response) or *off-target* (its
response is the base model's own answer): off-target positions are trained by
distillation, ``KL(base || ft)`` over the whole next-token distribution, so the
finetune keeps the base's distribution there rather than only its greedy answer (which
would sharpen the finetuned model everywhere and show as divergence on every topic).
"""

from __future__ import annotations

import torch

from finediff.data import format_text


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
    L = max(len(item[0]) for item in batch)
    input_ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), L), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), L), dtype=torch.long)
    for i, (ids, lab, *_) in enumerate(batch):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(lab)] = torch.tensor(lab)
        mask[i, :len(ids)] = 1
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
        base_logp = base_logits_BTV[:, :-1].float().log_softmax(-1)
        kl = (base_logp.exp() * (base_logp - logp)).sum(-1)
        loss = torch.where(distill_B[:, None].to(loss.device), kl, loss)
    return (loss * mask).sum() / mask.sum().clamp_min(1)
