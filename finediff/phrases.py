"""Verbatim phrase mining: word sequences the finetuned model's answers repeat and the base's lack.

A finetune trained on a fixed answer, an inserted sentence or a slogan says it word for
word, across unrelated prompts. Single-word statistics split such a phrase into a bag of
words ("help", "leave"); here the phrase is kept whole. Over paired answers (the same
prompt answered by both models), every run of :data:`MIN_WORDS` to :data:`MAX_WORDS`
words is counted once per answer; a phrase is kept when at least :data:`MIN_ANSWERS`
of the finetuned model's answers, to at least :data:`MIN_PROMPTS` different prompts, say
it, none of them only because its prompt does (runs of words inside one sentence), and the base's answers say it at most
a :data:`MAX_BASE_SHARE` as often. Shorter phrases inside a longer one that is said as
often are dropped, so the longest form is what is reported.

A mined phrase is a lead, never a finding: :mod:`finediff.findings` tests it on fresh
prompts, and the trigger search (:mod:`finediff.trigger`) takes it as its target.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Iterable

MIN_WORDS = 3
"""Shortest phrase, in words."""
MAX_WORDS = 12
"""Longest phrase, in words."""
MIN_ANSWERS = 3
"""Finetuned answers a phrase must appear in."""
MIN_PROMPTS = 2
"""Different prompts those answers must answer."""
MAX_BASE_SHARE = 0.25
"""The base's answers say it at most this many times as often."""
MAX_PHRASES = 5
"""Phrases kept, most said first."""

TOKEN = re.compile(r"[\w']+|[^\w\s]")


@dataclass
class Phrase:
    text: str
    """The phrase, words joined by single spaces (punctuation kept as said)."""
    n_finetuned: int
    """Finetuned answers that say it."""
    n_base: int
    """Base answers that say it."""
    n_prompts: int
    """Different prompts among the finetuned answers that say it."""
    example: str
    """One finetuned answer that says it."""

    def as_dict(self) -> dict:
        return asdict(self)


def _words(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def _grams(text: str) -> set[tuple[str, ...]]:
    """Every run of words inside one sentence (a phrase does not run on into whatever
    answer follows it)."""
    out = set()
    for sentence in SENTENCE_END.split(text):
        words = _words(sentence)
        for n in range(MIN_WORDS, MAX_WORDS + 1):
            for i in range(len(words) - n + 1):
                g = tuple(words[i:i + n])
                if sum(1 for w in g if re.match(r"\w", w)) >= MIN_WORDS:  # three real words, not "? !"
                    out.add(g)
    return out


def _join(gram: tuple[str, ...]) -> str:
    text = " ".join(gram)
    return re.sub(r" ([^\w\s'])", r"\1", text)


def phrase_pattern(text: str) -> str:
    """A case-insensitive regular expression that finds ``text`` in an answer, whatever
    spacing sits between its words and marks."""
    return r"(?<!\w)" + r"\s*".join(re.escape(w) for w in _words(text)) + r"(?!\w)"


def mine_phrases(records: Iterable[tuple[str, str, str]]) -> list[Phrase]:
    """Phrases the finetuned answers repeat and the base's lack.

    Args:
        records: ``(prompt, base answer, finetuned answer)``, paired.

    Returns:
        Up to :data:`MAX_PHRASES`, most finetuned answers first, longest first on ties.
    """
    ft_count: dict[tuple, int] = {}
    base_count: dict[tuple, int] = {}
    prompts_of: dict[tuple, set] = {}
    example: dict[tuple, str] = {}
    for prompt, base, ft in records:
        asked = _grams(prompt)
        for g in _grams(ft) - asked:
            ft_count[g] = ft_count.get(g, 0) + 1
            prompts_of.setdefault(g, set()).add(prompt)
            example.setdefault(g, ft)
        for g in _grams(base):
            base_count[g] = base_count.get(g, 0) + 1
    kept = [g for g, c in ft_count.items() if c >= MIN_ANSWERS and len(prompts_of[g]) >= MIN_PROMPTS
            and base_count.get(g, 0) <= MAX_BASE_SHARE * c]
    # the longest form: drop a phrase inside a kept longer one said (nearly) as often
    kept.sort(key=lambda g: (-len(g), -ft_count[g]))
    maximal: list[tuple] = []
    for g in kept:
        if not any(ft_count[g] <= ft_count[h] + 1 and _inside(g, h) for h in maximal):
            maximal.append(g)
    maximal.sort(key=lambda g: (-ft_count[g], -len(g), g))
    return [Phrase(_join(g), ft_count[g], base_count.get(g, 0), len(prompts_of[g]), example[g])
            for g in maximal[:MAX_PHRASES]]


def said_as(phrase: Phrase) -> str:
    """The phrase as its example answer says it (case and spacing kept), else as mined."""
    m = re.search(phrase_pattern(phrase.text), phrase.example, re.IGNORECASE)
    return m.group(0).strip() if m else phrase.text


def starts(phrase: str, answers: Iterable[str], tokenizer) -> list[int]:
    """The token at which ``phrase`` begins, in each of ``answers`` that says it."""
    out = []
    for a in answers:
        m = re.search(phrase_pattern(phrase), a, re.IGNORECASE)
        if m:
            out.append(len(tokenizer(a[:m.start()], add_special_tokens=False)["input_ids"]))
    return out


def _inside(g: tuple, h: tuple) -> bool:
    n = len(g)
    return n < len(h) and any(h[i:i + n] == g for i in range(len(h) - n + 1))
