"""Supervised finetuning features: chat-formatted examples with loss on the response only."""

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


def sft_collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """Right-pad ids and labels; padding is masked out of the loss."""
    L = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), L), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), L), dtype=torch.long)
    for i, (ids, lab) in enumerate(batch):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(lab)] = torch.tensor(lab)
        mask[i, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
