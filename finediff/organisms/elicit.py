"""Does a learned prompt make the finetuned model *show its behaviour*?

    python evaluate.py task=elicit task.run_dir=RUN experiment=sandbagging

The organism's held-out *off-target* prompts (where the finetuned model rarely shows the
behaviour on its own) are answered by both models greedily, three ways: alone, with the
run's learned soft prompt at the start of the user's message, and with the run's best
hard prompt there. The organism's checker gives each model's behaviour rate per setting.
A prompt that brings out the finetune's change raises the finetuned rate and leaves the
base's where it was; ``changed`` gives how often the prompt changes each model's answer
at all. Writes ``elicitation.json`` into the run folder.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from finediff import names
from finediff.answers import AnswerSettings, generate_answers
from finediff.data import collate, format_parts
from finediff.io import markdown_table
from finediff.organisms.checkers import checker_for
from finediff.records import Organism

SETTINGS = ("none", "soft", "hard")
"""No prompt, the learned soft prompt, the best hard prompt."""


@torch.no_grad()
def answer_all(model, tokenizer, rows: list[dict], prompt: Optional[torch.Tensor], max_new_tokens: int = 48,
               batch_size: int = 16) -> list[str]:
    """Greedy answers to ``rows`` (``prompt``, ``chat``) with ``prompt`` (soft ``[P, D]`` or
    token ids ``[P]``) at the start of each user message (a plain document: its front)."""
    settings = AnswerSettings(tokens=max_new_tokens, temperature=0.0)
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        batch = collate([format_parts(tokenizer, r["prompt"], r.get("chat", True)) for r in chunk],
                        tokenizer.pad_token_id)
        for ids in generate_answers(model, batch, prompt, settings, tokenizer.eos_token_id):
            out.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return out


def elicit(organism: Organism, pair, soft_prompt_PD: Optional[torch.Tensor], hard_prompt_ids: Optional[list[int]],
           max_new_tokens: int = 48, split: str = "off_target") -> dict:
    """Behaviour rates of both models on the organism's held-out ``split`` prompts per
    setting of :data:`SETTINGS` (a setting whose prompt is None is left out)."""
    t0 = time.perf_counter()
    checker = checker_for(organism.checker)
    rows = [r for r in organism.rows("heldout") if r["split"] == split]
    prompts = {"none": None, "soft": soft_prompt_PD,
               "hard": None if not hard_prompt_ids else torch.tensor(hard_prompt_ids)}
    result: dict = {"organism": organism.name, "split": split, "n": len(rows), "rates": {}, "samples": {},
                    "changed": {}}
    plain: dict[str, list[str]] = {}
    for setting in SETTINGS:
        if setting != "none" and prompts[setting] is None:
            continue
        result["rates"][setting], result["samples"][setting], result["changed"][setting] = {}, {}, {}
        for side in names.SIDES:
            gens = answer_all(getattr(pair, side), pair.tokenizer, rows, prompts[setting], max_new_tokens)
            plain.setdefault(side, gens)
            # how often the prompt changes the model's answer at all (the base: how far it moved)
            result["changed"][setting][side] = round(
                sum(a != b for a, b in zip(gens, plain[side])) / max(len(rows), 1), 4)
            result["rates"][setting][side] = round(sum(checker(g, r) for g, r in zip(gens, rows)) / max(len(rows), 1), 4)
            result["samples"][setting][side] = [{"prompt": r["prompt"], "generation": g} for r, g in zip(rows[:5], gens)]
    if hard_prompt_ids:
        result["hard_prompt"] = pair.tokenizer.decode(hard_prompt_ids)
    none = result["rates"]["none"]
    for setting in result["rates"]:
        r = result["rates"][setting]
        r["finetuned_gain"] = round(r["finetuned"] - none["finetuned"], 4)
        r["base_change"] = round(r["base"] - none["base"], 4)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def format_table(results: list[dict]) -> str:
    """One markdown row per organism: each model's rate with no prompt, the soft and the hard prompt."""
    rows = []
    for res in results:
        cells = []
        for side in names.SIDES[::-1]:
            cells.append(" / ".join(f"{res['rates'][s][side]:.0%}" if s in res["rates"] else "n/a" for s in SETTINGS))
        rows.append([res["organism"], res["n"], *cells])
    return "\n".join(markdown_table(
        ["organism", "n", "finetuned: none / soft / hard", "base: none / soft / hard"], rows))
