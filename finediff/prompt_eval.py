"""Evaluate prompts found elsewhere (a run's hard prompts, any prompts file, a divergent
dataset's prompts) on category texts, against the texts alone and the max-KL corpus
baseline (the mean of the highest-divergence texts alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from finediff.answers import AnswerSettings
from finediff.divergent_dataset import text_divergences
from finediff.errors import FinediffError
from finediff.io import load_torch, read_jsonl


def read_prompt_records(path: str | Path) -> list[tuple[str, Optional[list[int]]]]:
    """``(text, token_ids or None)`` per prompt of ``hard_prompts.jsonl``, a JSONL with
    ``text``/``prompt`` fields, or a ``divergent_dataset.pt``; ``token_ids`` come from
    ``hard_prompts.jsonl`` rows, which record the exact ids found. Anything else is a
    one-line error naming the file (and the line)."""
    path = Path(path)
    if not path.exists():
        raise FinediffError(f"prompts file not found: {path}")
    if path.suffix == ".pt":
        records = load_torch(path, "a divergent dataset (divergent_dataset.pt)")
        if not isinstance(records, list) or not all(isinstance(r, dict) and isinstance(r.get("prompt"), str)
                                                    for r in records):
            raise FinediffError(f"{path} is not a divergent dataset (a list of records with a 'prompt'); "
                                "give hard_prompts.jsonl or divergent_dataset.pt")
        prompts = [(p, None) for p in dict.fromkeys(r["prompt"] for r in records)]
    else:
        prompts = []
        for lineno, row in read_jsonl(path):
            text = row.get("text", row.get("prompt")) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise FinediffError(f"{path}:{lineno}: expected a 'text' or 'prompt' string")
            ids = row.get("token_ids")
            if ids is not None and not (isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids)):
                raise FinediffError(f"{path}:{lineno}: 'token_ids' must be a non-empty list of integers")
            if not text.strip() and not ids:
                raise FinediffError(f"{path}:{lineno}: empty prompt")
            prompts.append((text, ids))
    if not prompts:
        raise FinediffError(f"{path}: no prompts")
    return prompts


def evaluate_prompts(pair, prompts: list[tuple[str, Optional[list[int]]]], texts: list[str], batch_size: int = 8,
                     max_length: Optional[int] = None, max_kl_texts: int = 10, max_prompts: Optional[int] = None,
                     progress: bool = True, answers: Optional[AnswerSettings] = None) -> dict:
    """Each distinct prompt's (the first ``max_prompts``) mean divergence on ``texts`` (the prompt starts the user's
    message, as in training), best first, with the baselines. The divergence is read at
    the text positions only (so prompt and texts-alone scores cover the same tokens), or
    with ``answers`` over the finetuned model's answer given in each setting."""
    distinct = {(text, tuple(ids) if ids else None): (text, ids) for text, ids in prompts}
    baseline = text_divergences(pair, texts, batch_size=batch_size, max_length=max_length, answers=answers)
    mean_base = sum(baseline) / len(baseline)
    rows = []
    for p, ids in tqdm(list(distinct.values())[:max_prompts], desc="hard prompts", disable=not progress):
        ids = ids or pair.tokenizer(p, add_special_tokens=False)["input_ids"]
        scores = text_divergences(pair, texts, prompt=torch.tensor(ids), batch_size=batch_size,
                                  max_length=max_length, answers=answers)
        mean = sum(scores) / len(scores)
        rows.append({"prompt": p, "mean_divergence": mean, "max_divergence": max(scores),
                     "gain_over_texts": mean - mean_base,
                     "share_of_texts_increased": sum(s > b for s, b in zip(scores, baseline)) / len(texts)})
    rows.sort(key=lambda r: -r["mean_divergence"])
    top = sorted(baseline, reverse=True)[:max_kl_texts]
    result = {"n_texts": len(texts), "positions": "text" if answers is None else "response",
              "baseline_mean_divergence": mean_base, "baseline_max_divergence": max(baseline),
              # the diffing toolkit's max-KL corpus baseline: the mean of the highest-KL texts alone
              "max_kl_texts_mean_divergence": sum(top) / len(top), "prompts": rows,
              "best_prompt_mean_divergence": rows[0]["mean_divergence"],
              "mean_over_prompts": sum(r["mean_divergence"] for r in rows) / len(rows)}
    result["best_prompt_beats_max_kl_texts"] = (result["best_prompt_mean_divergence"]
                                                > result["max_kl_texts_mean_divergence"])
    return result
