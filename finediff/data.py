"""Category texts: shipped JSONL files or hub datasets, streamed with ``datasets``.

A category is named either by a shipped file ``data/categories/<name>.jsonl`` (one
``{"text": ...}`` object per line), by a path to any such JSONL file, or by a hub
dataset spec ``hub:<dataset id>[:<config>][:<split>][@<text field>]`` for real users
(streamed, so only the texts taken are downloaded).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

from finediff.errors import FinediffError
from finediff.io import read_jsonl
from finediff.names import CATEGORY_DIR, CATEGORY_TEXT_FIELD

REPO_ROOT = Path(__file__).resolve().parent.parent
HUB_PREFIX = "hub:"


def category_dir(root: Optional[str | Path] = None) -> Path:
    return Path(root) if root else REPO_ROOT / CATEGORY_DIR


def known_categories(root: Optional[str | Path] = None) -> list[str]:
    """Names of the shipped categories (files ``<name>.jsonl`` in the category folder)."""
    return sorted(p.stem for p in category_dir(root).glob("*.jsonl"))


def category_file(category: str, root: Optional[str | Path] = None) -> Path:
    """Path of a category's JSONL file; an unknown name lists the known ones."""
    as_path = Path(category)
    if as_path.suffix == ".jsonl":
        if not as_path.exists():
            raise FinediffError(f"category file not found: {category}")
        return as_path
    path = category_dir(root) / f"{category}.jsonl"
    if not path.exists():
        raise FinediffError(
            f"unknown category {category!r}; known: {', '.join(known_categories(root)) or '(none)'}"
        )
    return path


def check_category(category: str, root: Optional[str | Path] = None) -> None:
    """Fail fast on a category that cannot be read: an unknown name, a missing file or a
    malformed line (hub specs are checked when they stream)."""
    if not category.startswith(HUB_PREFIX):
        validate_jsonl(category_file(category, root))


def validate_jsonl(path: Path, field: str = CATEGORY_TEXT_FIELD) -> int:
    """Check every line of a JSONL file; a malformed one is an error naming file and line."""
    count = 0
    for lineno, obj in read_jsonl(path):
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str) or not obj[field].strip():
            raise FinediffError(f"{path}:{lineno}: expected an object with a non-empty string {field!r}")
        count += 1
    if count == 0:
        raise FinediffError(f"{path}: no texts")
    return count


def _stream_hub(spec: str) -> Iterable[str]:
    from datasets import load_dataset

    body, _, field = spec[len(HUB_PREFIX):].partition("@")
    parts = body.split(":")
    name, config = parts[0], (parts[1] or None) if len(parts) > 1 else None
    split = parts[2] if len(parts) > 2 else "train"
    field = field or CATEGORY_TEXT_FIELD
    try:
        stream = load_dataset(name, config, split=split, streaming=True)
        for row in stream:
            if field not in row:
                raise FinediffError(f"hub dataset {name!r} has no field {field!r}; fields: {sorted(row)}")
            yield row[field]
    except FinediffError:
        raise
    except Exception as err:
        raise FinediffError(f"cannot stream hub dataset {spec!r}: {str(err).splitlines()[0]}") from err


def stream_texts(category: str, root: Optional[str | Path] = None) -> Iterable[str]:
    """Stream a category's texts with ``datasets`` in streaming mode."""
    if category.startswith(HUB_PREFIX):
        yield from _stream_hub(category)
        return
    from datasets import load_dataset

    path = category_file(category, root)
    validate_jsonl(path)
    stream = load_dataset("json", data_files=str(path), split="train", streaming=True)
    for row in stream:
        yield row[CATEGORY_TEXT_FIELD]


def take(iterable: Iterable[str], n: Optional[int]) -> list[str]:
    out = []
    for text in iterable:
        if n is not None and len(out) >= n:
            break
        out.append(text)
    return out


@dataclass
class CategoryTexts:
    """Texts of one category, split into train and validation by a seed."""

    category: str
    train: list[str]
    val: list[str]


VAL_FRACTION = 0.2
"""Share of each category a run holds out to validate its soft prompt."""


def load_category(
    category: str,
    max_texts: Optional[int] = None,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    root: Optional[str | Path] = None,
) -> CategoryTexts:
    """Take up to ``max_texts`` texts and split them deterministically by ``seed``."""
    if not 0.0 <= val_fraction < 1.0:
        raise FinediffError(f"val_fraction must be in [0, 1), got {val_fraction}")
    texts = take(stream_texts(category, root), max_texts)
    if not texts:
        raise FinediffError(f"category {category!r} has no texts")
    order = list(range(len(texts)))
    random.Random(f"{seed}:{category}").shuffle(order)
    n_val = max(1, round(len(texts) * val_fraction)) if val_fraction > 0 and len(texts) > 1 else 0
    val = [texts[i] for i in order[:n_val]]
    train = [texts[i] for i in order[n_val:]] or val
    return CategoryTexts(category, train, val)


_SENTINEL = "\u2063FINEDIFF_TEXT\u2063"


def format_parts(tokenizer, text: str, chat_template: bool = True) -> tuple[list[int], list[int]]:
    """Token ids of a user text as ``(prefix, body)``.

    With a chat template (when the tokenizer has one) the text is a user turn followed by
    the generation prompt: ``prefix`` is the template before the user's words (system
    prompt, user header) and ``body`` is the user's words through the generation prompt.
    A soft or hard prompt goes between the two, i.e. at the start of the user's message.
    Without a template, ``prefix`` is empty and ``body`` is the plain text.
    """
    if chat_template and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], add_generation_prompt=True, tokenize=False
        )
        head, _, tail = rendered.partition(_SENTINEL)
        prefix = tokenizer(head, add_special_tokens=False)["input_ids"]
        return prefix, tokenizer(text + tail, add_special_tokens=False)["input_ids"]
    return [], tokenizer(text)["input_ids"]


def format_text(tokenizer, text: str, chat_template: bool = True) -> list[int]:
    """All token ids of a user text (see :func:`format_parts`)."""
    prefix, body = format_parts(tokenizer, text, chat_template)
    return prefix + body


def pad_rows(rows: list[list[int]], pad_value: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [B, L], mask [B, L])``: rows padded with ``pad_value`` to the longest,
    on the right (training, scoring) or the left (generation: every row's last real
    token in the last column); ``mask`` is 1 on real tokens."""
    L = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), L), pad_value, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(L - len(r), L) if left else slice(0, len(r))
        ids[i, cols] = torch.tensor(r, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def collate(items: list, pad_id: int, max_length: Optional[int] = None) -> dict:
    """Right-pad a batch. Items are token id lists or ``(prefix, body)`` pairs.

    Returns ``input_ids`` and ``attention_mask`` (1 on real tokens), and ``prompt_pos``:
    where a prompt is spliced in each row (the prefix length; 0 for plain lists).
    Too long rows lose tokens from the front of the prefix first, then of the body, so
    the end (where a chat template puts the generation prompt) is always kept.
    """
    rows, positions = [], []
    for item in items:
        prefix, body = (list(item[0]), list(item[1])) if isinstance(item, tuple) else ([], list(item))
        if max_length and len(prefix) + len(body) > max_length:
            drop = len(prefix) + len(body) - max_length
            cut = min(drop, len(prefix))
            prefix, body = prefix[cut:], body[drop - cut:]
        rows.append(prefix + body)
        positions.append(len(prefix))
    input_ids, mask = pad_rows(rows, pad_id)
    return {"input_ids": input_ids, "attention_mask": mask,
            "prompt_pos": torch.tensor(positions, dtype=torch.long)}
