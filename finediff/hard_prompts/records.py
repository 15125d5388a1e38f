"""The hard-prompt record and its file: :class:`HardPrompt`, one row of ``hard_prompts.jsonl``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from finediff.errors import FinediffError
from finediff.io import read_jsonl


@dataclass
class HardPrompt:
    """One hard prompt and how it measured."""

    method: str
    """``projection``, ``guided``, ``pez``, ``text`` or ``gcg``."""
    text: str
    """The decoded prompt (the start of a user message)."""
    token_ids: list[int]
    """Its token ids."""
    divergence: float
    """Mean divergence of the pair on the evaluation texts with this prompt."""
    divergence_no_prompt: float
    """The same texts without any prompt (the baseline it must beat)."""
    perplexity: float
    """The base model's perplexity of the prompt given the chat header (fluency)."""
    objective: float
    """``divergence - fluency_weight * log(perplexity)`` as optimised."""

    def as_dict(self) -> dict:
        return asdict(self)


def read_hard_prompts(path: str | Path) -> list[HardPrompt]:
    """The rows of a ``hard_prompts.jsonl``; a bad line is a one-line error naming the
    file and the line (checked before any model work starts)."""
    keys = tuple(f.name for f in fields(HardPrompt))
    out = []
    for lineno, row in read_jsonl(path):
        if not isinstance(row, dict) or set(keys) - set(row):
            missing = sorted(set(keys) - set(row)) if isinstance(row, dict) else list(keys)
            raise FinediffError(f"{path}:{lineno}: not a hard prompt (missing {', '.join(missing)})")
        ids = row["token_ids"]
        if not (isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids)):
            raise FinediffError(f"{path}:{lineno}: 'token_ids' must be a non-empty list of integers")
        if not isinstance(row["text"], str):
            raise FinediffError(f"{path}:{lineno}: 'text' must be a string")
        out.append(HardPrompt(**{k: row[k] for k in keys}))
    return out
