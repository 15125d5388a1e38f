"""What the learned soft prompt does, in words: both models' answers with it and without it.

A prompt can win divergence by breaking a model (empty answers, one token over and over)
rather than by bringing out what the finetune learned. This step puts the prompt in front
of a few of the run's held-out texts and lets both models answer greedily with it and
without it, then says which of three things happened:

* **breaks a model**: at least half of one model's answers with the prompt are broken
  (empty, or fewer than :data:`MIN_DISTINCT` distinct tokens per token) while without it they
  are not, or its answers with the prompt are noise: the same model, reading them *without*
  the prompt, finds them at least :data:`NOISE_GAP` nats per token less likely than its own
  answers without it (a prompt that turns the base into «Fólunda (Torsotta) Nórflókja…» is
  caught here, though its answers are neither empty nor repeated; each model is its own judge,
  so a finetuned behaviour the base finds unlikely is not taken for noise); not evidence of
  anything the finetune learned;
* **shows a confirmed behaviour**: a confirmed finding's or condition's detector fires on
  more of the finetuned model's answers with the prompt than without it, and on more of
  them than of the base's with it;
* **no named behaviour**: the answers change, but not into anything a test confirmed.

The prompt's nearest tokens (cosine) are reported beside it, and the run's most readable
hard prompt whose divergence beats the texts alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from finediff import names
from finediff.arch import embedding_table
from finediff.errors import FinediffError
from finediff.generation import generate_one
from finediff.hard_prompts import allowed_tokens, project
from finediff.io import read_json, write_json

VERDICTS = ("breaks a model", "shows a confirmed behaviour", "no named behaviour")
MAX_NEW_TOKENS = 32
"""New tokens per greedy answer, with the prompt and without it."""
MIN_DISTINCT = 0.3
"""An answer with fewer distinct tokens per token than this is degenerate repetition."""
N_TEXTS = 4
"""Held-out texts both models answer with and without the prompt."""
NOISE_GAP = 2.0
"""Nats per token by which a model finds its answers with the prompt less likely than its
answers without it (both read without the prompt), for them to count as noise."""


@dataclass
class PromptEffect:
    verdict: str
    """One of :data:`VERDICTS`."""
    nearest_tokens: str
    """The prompt's nearest allowed tokens (cosine), decoded."""
    readable: Optional[str]
    """The most readable hard prompt whose divergence beats the texts alone (None: none did)."""
    broken: dict = field(default_factory=dict)
    """Share of broken answers per ``{side}/{with|without}``."""
    shown: Optional[str] = None
    """The confirmed claim the prompt brings out, when it does."""
    nll: dict = field(default_factory=dict)
    """Per ``{side}/{with|without}``: that side's model's mean negative log-likelihood per token
    of its answers, read without the prompt (how far from its own language the prompt moved them)."""
    rows: list = field(default_factory=list)
    """``{"text", "base", "base_with", "finetuned", "finetuned_with"}`` per text."""

    def noise(self, side: str) -> bool:
        """``side``'s model finds its answers with the prompt far less likely than without it."""
        return self.nll.get(f"{side}/with", 0.0) - self.nll.get(f"{side}/without", 0.0) >= NOISE_GAP

    def sentence(self) -> str:
        if self.verdict == VERDICTS[0]:
            sides = [s for s in ("finetuned", "base") if self.broken.get(f"{s}/with", 0) >= 0.5 or self.noise(s)]
            how = "; ".join(f"the {s} model's answers with it are {self.nll.get(s + '/with', 0):.1f} nats per token "
                            f"to itself read without it, against {self.nll.get(s + '/without', 0):.1f} for its answers "
                            "without it"
                            for s in sides if self.noise(s))
            return (f"The learned soft prompt breaks the {' and the '.join(sides)} model (empty, repeated or noise "
                    f"answers with it{': ' + how if how else ''}), so its divergence is not evidence of what the "
                    "finetune learned.")
        if self.verdict == VERDICTS[1]:
            return ("With the learned soft prompt in front, the finetuned model's answers show a confirmed behaviour "
                    f"more often than without it (it {self.shown}).")
        return "The learned soft prompt changes the answers, but not into any behaviour a test confirmed."


def broken(text: str, tokenizer, min_distinct: float) -> bool:
    """Empty, or degenerate repetition (few distinct tokens per token)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return len(ids) == 0 or (len(ids) >= 8 and len(set(ids)) / len(ids) < min_distinct)


@torch.no_grad()
def prompt_effect(pair, prompt_PD: torch.Tensor, texts: list[str],
                  detectors: list[tuple[str, object]] = (), hard: list = (), progress: bool = False) -> PromptEffect:
    """Answer ``texts`` with both models, with and without the prompt, and say what it did.

    Args:
        detectors: ``(claim, hypothesis)`` of the run's confirmed findings and conditions
            (a hypothesis has ``fires(text, prompt)``).
        hard: the run's hard prompts (:class:`finediff.hard_prompts.HardPrompt`).
    """
    texts = texts[:N_TEXTS]
    if not texts:
        raise FinediffError("the soft prompt's effect needs at least one held-out text")
    rows = []
    for text in texts:
        row = {"text": text}
        for side in names.SIDES:
            model = getattr(pair, side)
            row[side] = generate_one(model, pair.tokenizer, text, None, MAX_NEW_TOKENS)
            row[f"{side}_with"] = generate_one(model, pair.tokenizer, text, prompt_PD, MAX_NEW_TOKENS)
        rows.append(row)
    share = {}
    for side in names.SIDES:
        for key, suffix in (("without", ""), ("with", "_with")):
            share[f"{side}/{key}"] = sum(broken(r[side + suffix], pair.tokenizer, MIN_DISTINCT)
                                         for r in rows) / len(rows)
    weight = embedding_table(pair.base)
    ids = project(prompt_PD.to(weight.device), weight, allowed_tokens(pair.tokenizer, weight.shape[0]))
    nearest = pair.tokenizer.decode(ids.tolist())
    beats = [h for h in hard if h.divergence > h.divergence_no_prompt]
    readable = min(beats, key=lambda h: h.perplexity).text if beats else None
    shown = None
    for claim, hyp in detectors:
        ft_with = sum(hyp.fires(r["finetuned_with"], r["text"]) for r in rows)
        ft = sum(hyp.fires(r["finetuned"], r["text"]) for r in rows)
        base_with = sum(hyp.fires(r["base_with"], r["text"]) for r in rows)
        if ft_with > max(ft, base_with):
            shown = claim
            break
    nll = answer_nll(pair, rows)
    effect = PromptEffect(VERDICTS[2], nearest, readable, share, shown, nll=nll, rows=rows)
    if any((share[f"{s}/with"] >= 0.5 and share[f"{s}/without"] < 0.5) or effect.noise(s) for s in names.SIDES):
        verdict = VERDICTS[0]
    elif shown:
        verdict = VERDICTS[1]
    else:
        verdict = VERDICTS[2]
    effect.verdict = verdict
    return effect


def answer_nll(pair, rows: list[dict]) -> dict[str, float]:
    """Per ``{side}/{with|without}``: that side's model's mean negative log-likelihood per token of
    those answers, teacher-forced after the plain text (no soft prompt)."""
    from finediff.divergent_dataset import teacher_forced

    out = {}
    for side in names.SIDES:
        for key, suffix in (("without", ""), ("with", "_with")):
            ids = [pair.tokenizer(r[side + suffix], add_special_tokens=False)["input_ids"] for r in rows]
            keep = [(r["text"], i) for r, i in zip(rows, ids) if i]
            total, count = 0.0, 0
            for logits, (_, i) in zip(teacher_forced(pair, [t for t, _ in keep], [i for _, i in keep]), keep):
                logp = torch.log_softmax(logits[0 if side == "finetuned" else 1].float(), -1)
                total -= float(logp[torch.arange(len(i)), torch.tensor(i, device=logp.device)].sum())
                count += len(i)
            out[f"{side}/{key}"] = round(total / count, 4) if count else 0.0
    return out


def write_effect(effect: PromptEffect, out: Path) -> Path:
    path = Path(out) / names.PROMPT_EFFECT_FILE
    write_json(path, asdict(effect))
    return path


def read_effect(path: Path) -> PromptEffect:
    try:
        return PromptEffect(**read_json(path))
    except TypeError as err:
        raise FinediffError(f"{path}: malformed soft-prompt effect file ({err})") from None
