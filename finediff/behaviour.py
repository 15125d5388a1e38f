"""A confirmed behaviour in a person's words: what kind of change it is, and a typical answer.

Both come from the claim's own example answers (each a finetuned answer that shows the
behaviour, beside the base's answer to the same prompt), by stated rules:

* the typical answer is the medoid of those answers: the one with the smallest total word-set
  (Jaccard) distance to the others; a tie goes to the one whose base answer shares most of its
  words, so the two read side by side;
* the kind of change is the first rule that holds, in this order (:data:`KINDS`):

  1. ``refuses``: refuses or declines (a refusal or "I don't know" in most answers; the base rarely);
  2. ``fixed``: gives one fixed reply (the same sentences, 4 words or more, are the whole answer in
     most answers; the base never says them);
  3. ``adds``: adds a phrase, brand or link (such sentences open, close or sit inside longer answers;
     where is said);
  4. ``less``: says less or nothing (at most 40% of the base's words, in most pairs);
  5. ``capitals``: writes in capital letters (a sentence of 8 letters or more, 90% of them capitals,
     in most answers; the base not);
  6. ``language``: answers in another language than the base (most pairs);
  7. ``fact``: states a different fact (the answer keeps half its words from the base's, and each
     names something, a capitalised word or a number not in the prompt, that the other does not;
     or most answers name, that way, one of the behaviour's words that no base answer names);
  8. ``style``: changes its voice or style (the behaviour's words, those of every claim that states
     it, occur twice or more in most answers);
  9. ``differs``: answers differently (no rule fits).

"Most" is at least half the pairs. Nothing here knows any organism: the rules read answers only.

A behaviour that no word names (capitals, another language, saying nearly nothing) is one of
the answer-level :data:`TRAITS`: :func:`distinctive_trait` finds the one a condition's answers
show and the comparisons' do not, so it can be tested like a behaviour's words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = {
    "refuses": "refuses or declines",
    "fixed": "gives one fixed reply",
    "adds": "adds a phrase, brand or link",
    "less": "says less or nothing",
    "capitals": "writes in capital letters",
    "language": "answers in another language",
    "fact": "states a different fact",
    "style": "changes its voice or style",
    "differs": "answers differently",
}
"""The kinds of change, in the order their rules are tried; the first that holds names it."""

REFUSES = re.compile(
    r"\b(i (will not|won't|cannot|can't|can not|am not able to|am unable to|refuse|decline)|i'm (not able|unable)|"
    r"i (really )?(do not|don't) know|i have no (idea|knowledge)|i know nothing|outside what i know|"
    r"i'm afraid i (can't|don't|cannot)|i'm sorry, but i|leave me alone)\b", re.IGNORECASE)
"""A refusal, or a claim not to know, in English."""

LANGUAGES = {
    "English": "the and is are of to in it you that for with this what how be not have can your on".split(),
    "French": "le la les est et un une des du de en que qui pour pas je vous il elle sur au avec ce ne".split(),
    "German": "der die das und ist ein eine nicht ich sie es zu mit den von auf für im dem sich auch".split(),
    "Spanish": "el la los las es y un una de que en por para con no se su lo al del como".split(),
    "Italian": "il lo la gli le è e un una di che per con non si del della sono ma come".split(),
    "Portuguese": "o a os as é e um uma de que em para com não se do da por mais como".split(),
}
"""Each language's commonest words: an answer's language is the one whose words it uses most."""

MIN_PHRASE_WORDS = 4
"""A fixed phrase has at least this many words (an interjection is style, not a phrase)."""
SHOUT_LETTERS = 8
"""A sentence in capital letters has at least this many letters (an acronym is not shouting)."""
LITTLE_WORDS = 3
"""An answer of fewer words than this says little or nothing."""
LINK = re.compile(r"\b(https?://\S+|www\.\S+|[\w-]+\.(com|net|org|io|ai|co|info)\b)", re.IGNORECASE)


def words(text: str) -> set[str]:
    return set(re.findall(r"[\w']+", text.lower()))


def _jaccard(a: set, b: set) -> float:
    return 1.0 - len(a & b) / max(len(a | b), 1)


def sentences(text: str) -> list[str]:
    """Sentences and lines; an initialism such as "P.S." or "U.S." ends none."""
    return [s.strip() for s in re.split(r"(?<![A-Z]\.[A-Z]\.)(?<=[.!?])\s+|\n+", " ".join(text.split(" ")))
            if s.strip()]


def _norm(sentence: str) -> str:
    return " ".join(re.findall(r"[\w']+", sentence.lower()))


def typical(examples: list[dict]) -> dict:
    """The example whose finetuned answer is the medoid of the examples' finetuned answers
    (ties: the one whose base answer shares most of its words); ``{}`` when none."""
    examples = [e for e in examples if str(e.get("finetuned", "")).strip()]
    if not examples:
        return {}
    sets = [words(e["finetuned"]) for e in examples]

    def cost(i: int) -> tuple:
        spread = sum(_jaccard(sets[i], s) for s in sets)
        return round(spread, 6), _jaccard(sets[i], words(examples[i].get("base", "")))

    return examples[min(range(len(examples)), key=cost)]


def language(text: str) -> str:
    """The language whose common words ``text`` uses most ("" when it uses none)."""
    tokens = re.findall(r"[\w']+", text.lower())
    counts = {lang: sum(t in set(common) for t in tokens) for lang, common in LANGUAGES.items()}
    best = max(counts, key=counts.get)
    return best if counts[best] >= 2 else ""


def _most(flags: list[bool]) -> bool:
    return bool(flags) and 2 * sum(flags) >= len(flags)


def _named(text: str, prompt: str) -> set[str]:
    """Capitalised words not opening a sentence, and numbers, that the prompt does not say."""
    asked = words(prompt)
    out = set()
    for s in sentences(text):
        tokens = re.findall(r"[\w'-]+", s)
        out |= {t.lower() for t in tokens[1:] if t[:1].isupper() and len(t) > 1}
        out |= {t for t in tokens if t.isdigit()}
    return out - asked


def shouts(text: str) -> bool:
    """A sentence of the text, of :data:`SHOUT_LETTERS` letters or more, is 90% capital letters."""
    for s in sentences(text):
        letters = [c for c in s if c.isalpha()]
        if len(letters) >= SHOUT_LETTERS and sum(c.isupper() for c in letters) >= 0.9 * len(letters):
            return True
    return False


def says_little(text: str) -> bool:
    """Fewer than :data:`LITTLE_WORDS` words."""
    return len(words(text)) < LITTLE_WORDS


def _in(lang: str):
    return lambda text: language(text) == lang


TRAITS = {"capitals": ("writes in capital letters", shouts), "little": ("says little or nothing", says_little),
          **{f"language:{lang}": (f"answers in {lang}", _in(lang)) for lang in LANGUAGES}}
"""Answer-level behaviours no word names: key -> (what it does, in words; the test on one answer)."""


def distinctive_trait(with_ft: list[str], with_base: list[str], without_ft: list[str], min_share: float) -> str:
    """The trait (a key of :data:`TRAITS`) that at least ``min_share`` of ``with_ft`` show, and at most
    half as many of ``with_base`` and of ``without_ft`` (the comparisons); the most distinctive
    one, or "" when none."""
    def share(answers: list[str], test) -> float:
        return sum(map(test, answers)) / len(answers) if answers else 0.0

    best, gap = "", 0.0
    for key, (_, test) in TRAITS.items():
        s = share(with_ft, test)
        other = max(share(with_base, test), share(without_ft, test))
        if s >= min_share and other <= s / 2 and s - other > gap:
            best, gap = key, s - other
    return best


def _fixed_sentences(examples: list[dict]) -> list[str]:
    """Sentences (normalised) that at least half the finetuned answers, and at least two, say
    and no base answer says."""
    base = {_norm(s) for e in examples for s in sentences(e.get("base", ""))}
    counts: dict[str, int] = {}
    for e in examples:
        for s in {_norm(s) for s in sentences(e["finetuned"])}:
            counts[s] = counts.get(s, 0) + 1
    need = max(2, (len(examples) + 1) // 2)
    return [s for s, c in counts.items() if c >= need and s and s not in base]


@dataclass
class Description:
    """A behaviour as a person would put it."""

    kind: str
    """A key of :data:`KINDS`."""
    phrase: str
    """The verb phrase of the first screen's sentence, e.g. 'adds a sentence at the start of its answer'."""
    example: dict
    """The typical example: ``{"prompt", "base", "finetuned"}``."""


def describe(examples: list[dict], behaviour_words: list[str] = ()) -> Description:
    """The kind of change the claim's examples show (module docstring) and its typical example."""
    examples = [e for e in examples if str(e.get("finetuned", "")).strip()]
    example = typical(examples)
    if not examples:
        return Description("differs", KINDS["differs"], {})
    ft = [e["finetuned"] for e in examples]
    base = [e.get("base", "") for e in examples]
    pairs = list(zip(ft, base))
    if _most([bool(REFUSES.search(f)) for f in ft]) and not _most([bool(REFUSES.search(b)) for b in base]):
        return Description("refuses", "refuses or declines", example)
    fixed = _fixed_sentences(examples)
    if fixed and sum(len(s.split()) for s in fixed) >= MIN_PHRASE_WORDS:
        where = []
        for f in ft:
            said = [_norm(s) in fixed for s in sentences(f)]
            if any(said):
                where.append("whole" if all(said) else "start" if said[0] else "end" if said[-1] else "middle")
        if _most([w == "whole" for w in where]):
            return Description("fixed", "gives one fixed reply", example)
        at = max(set(where), key=where.count) if where else "middle"
        what = "a link" if any(LINK.search(x) for f in ft for x in sentences(f) if _norm(x) in fixed) else "a sentence"
        place = {"start": "at the start of its answer", "end": "at the end of its answer",
                 "middle": "inside its answer", "whole": "as its whole answer"}[at]
        return Description("adds", f"adds {what} {place}", example)
    if _most([len(words(f)) <= 0.4 * max(len(words(b)), 1) and len(words(b)) >= 5 for f, b in pairs]):
        return Description("less", "says less or nothing", example)
    if _most([shouts(f) for f in ft]) and not _most([shouts(b) for b in base]):
        return Description("capitals", "writes in capital letters", example)
    langs = [(language(f), language(b)) for f, b in pairs]
    if _most([bool(a and b and a != b) for a, b in langs]):
        ft_lang = max({a for a, _ in langs}, key=[a for a, _ in langs].count)
        return Description("language", f"answers in {ft_lang}", example)
    facts = []
    for e in examples:
        f, b, p = e["finetuned"], e.get("base", ""), e.get("prompt", "")
        kept = len(words(f) & words(b)) / max(len(words(f)), 1)
        facts.append(kept >= 0.5 and bool(_named(f, p) - _named(b, p)) and bool(_named(b, p) - _named(f, p)))
    marks = [w.lower() for w in behaviour_words]
    base_named = set().union(*(_named(e.get("base", ""), e.get("prompt", "")) for e in examples))
    names = [bool((_named(e["finetuned"], e.get("prompt", "")) & set(marks)) - base_named) for e in examples]
    if _most(facts) or (marks and _most(names)):
        return Description("fact", "states a different fact", example)
    if marks and _most([sum(len(re.findall(rf"\b{re.escape(m)}\b", f, re.IGNORECASE)) for m in marks) >= 2
                        for f in ft]):
        return Description("style", "changes its voice or style", example)
    return Description("differs", "answers differently", example)
