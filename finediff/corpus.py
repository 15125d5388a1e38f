"""The shipped generic corpus: text unrelated to any finetune, for the activation lens.

The Activation Difference Lens reads the first tokens of generic text (the paper used a
web pretraining sample). Offline, finediff ships ``data/generic/generic.jsonl``: passages
of Python's own reference documentation (the ``pydoc_data`` topics and standard-library
docstrings that ship with CPython) and the free-software licence texts a Debian system
keeps in ``/usr/share/common-licenses``, cut at sentence ends into passages of 100 to 260
words, keeping those of 128 tokens or more with the SmolLM2 tokenizer. Real users point ``lens.texts`` at any hub
dataset (``hub:HuggingFaceFW/fineweb:sample-10BT:train@text``) instead.

    python -m finediff.corpus            # rebuild data/generic/generic.jsonl
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path
from pydoc_data.topics import topics

from finediff.data import REPO_ROOT
from finediff.io import write_jsonl
from finediff.models import DEFAULT_MODEL, load_tokenizer

GENERIC_FILE = REPO_ROOT / "data" / "generic" / "generic.jsonl"
GENERIC_CATEGORY = str(GENERIC_FILE)
MIN_WORDS, MAX_WORDS = 100, 260
LICENSES = Path("/usr/share/common-licenses")
MIN_TOKENS = 128


def _clean(text: str) -> str:
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\s*\n\s*", " ", text)
    return text.strip()


def _sources() -> list[str]:
    docs = [topics[k] for k in sorted(topics)]
    if LICENSES.is_dir():
        docs += [p.read_text(errors="ignore") for p in sorted({f.resolve() for f in LICENSES.iterdir() if f.is_file()})]
    skip = ("antigravity", "this", "idlelib", "tkinter", "turtle", "test", "lib2to3", "ensurepip", "pydoc_data")
    names = []
    for info in pkgutil.walk_packages(onerror=lambda _: None):
        path = str(getattr(info.module_finder, "path", ""))
        if "site-packages" in path or info.name.startswith(skip) or "._" in info.name or info.name.startswith("_"):
            continue
        names.append(info.name)
    for name in sorted(set(names)):
        try:
            module = importlib.import_module(name)
        except BaseException:  # modules that need a display, a platform, ...
            continue
        if isinstance(module.__doc__, str):
            docs.append(module.__doc__)
        for _, obj in sorted(vars(module).items()):
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", "") == name:
                members = [obj] + ([m for _, m in sorted(vars(obj).items()) if inspect.isfunction(m)]
                                   if inspect.isclass(obj) else [])
                docs += [m.__doc__ for m in members if isinstance(m.__doc__, str) and len(m.__doc__.split()) > 40]
    return docs


def passages(docs: list[str]) -> list[str]:
    """Cut documents at sentence ends into passages of MIN_WORDS..MAX_WORDS words."""
    out, seen = [], set()
    for doc in docs:
        sentences = re.split(r"(?<=[.!?])\s+", _clean(doc))
        cur: list[str] = []
        for sent in sentences:
            cur.append(sent)
            n = sum(len(s.split()) for s in cur)
            if n >= MIN_WORDS:
                text = " ".join(cur)
                if n <= MAX_WORDS and text not in seen and not text.startswith((">>>", "...")):
                    seen.add(text)
                    out.append(text)
                cur = []
    return out


def build(path=GENERIC_FILE) -> int:
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    texts = [t for t in passages(_sources()) if len(tokenizer(t)["input_ids"]) >= MIN_TOKENS]
    write_jsonl(path, [{"text": t} for t in texts])
    return len(texts)


if __name__ == "__main__":
    print(f"{build()} passages -> {GENERIC_FILE}", file=sys.stderr)
