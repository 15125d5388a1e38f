"""Candidate findings, each tested on fresh prompts.

The evidence suggests what changed: the words diff mining found the finetune pushing up,
the words the divergent dataset's finetuned generations favour (or drop), the ADL's
tokens, and two generic behaviours every audit checks: refusing or claiming not to know, and
answering differently from the base (the words the base's own greedy answer to a prompt
leads with go missing). Each suggestion becomes a hypothesis with a detector that fires on
one generation ("the finetuned model says *rome*"). Every hypothesis is then tested on
prompts no step of the discovery looked at (drawn at random from the survey's fresh half,
where the change is): both models sample ``k`` answers to each prompt, and the prompt is the
unit: each prompt's outcome is the share of its answers that show the behaviour, and the
exact sign test asks whether the finetuned model's share is higher on more prompts than it
is lower (:func:`finediff.stats.paired_test`). p-values are Holm-corrected over all
hypotheses at the findings' share of the audit's error budget
(:func:`finediff.stats.alpha_share`); a finding is *confirmed* when its corrected p-value is
below that and the rates differ by at least :data:`MIN_EFFECT`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from finediff.behaviour import TRAITS
from finediff.stats import holm, paired_test, per_prompt
from finediff import names
from finediff.errors import FinediffError
from finediff.generation import generate
from finediff.io import read_json, write_json

REFUSAL = (r"\b(i (do not|don't|cannot|can't|am not able to|am unable to|have no)|i'm (not|unable|sorry)"
           r"|sorry|unfortunately|as an ai)\b")
"""Refusing or claiming not to know: a behaviour class every audit tests."""
WORDS_PER_SOURCE = 6
"""Single-word hypotheses kept per source (diff mining, favoured words, ADL tokens, dropped words)."""
MAX_HYPOTHESES = 16
"""Hypotheses tested at most, first come first kept (verbatim phrases besides)."""
PHRASE_HYPOTHESES = 3
"""Verbatim phrases tested, most said first."""
TEMPERATURE = 0.7
"""Sampling temperature of the tested answers."""
MIN_EFFECT = 0.1
"""Smallest difference of rates a confirmed finding shows."""


@dataclass
class Hypothesis:
    claim: str
    """In plain words, e.g. 'says "rome" more often than the base'."""
    pattern: str
    """Case-insensitive regular expression that fires on one generation."""
    direction: str
    """``more``: the finetuned model does it more often; ``less``: less often."""
    source: str
    """Which evidence suggested it."""
    unprompted: bool = False
    """Count a matched word only when the prompt does not contain it (an answer that
    repeats the question's words says nothing new)."""
    keys: Optional[dict] = None
    """Per-prompt words instead of ``pattern``: the detector fires on an answer to a prompt
    that contains one of that prompt's words (a prompt without any never fires)."""
    trait: str = ""
    """An answer-level trait instead of ``pattern`` (a key of :data:`finediff.behaviour.TRAITS`)."""

    def fires(self, text: str, prompt: str = "") -> bool:
        if self.trait:
            return TRAITS[self.trait][1](text)
        if self.keys is not None:
            words = self.keys.get(prompt)
            return bool(words) and re.search(r"\b(" + "|".join(map(re.escape, words)) + r")\b", text,
                                             re.IGNORECASE) is not None
        for m in re.finditer(self.pattern, text, re.IGNORECASE):
            if not self.unprompted or re.search(rf"\b{re.escape(m.group(0))}\b", prompt, re.IGNORECASE) is None:
                return True
        return False


@dataclass
class Finding:
    hypothesis: Hypothesis
    rate_finetuned: float
    """Share of the finetuned model's answers that show it (the mean of its prompts' shares)."""
    rate_base: float
    n_prompts: int
    """Prompts it was tested on (the unit of the test)."""
    answers_per_prompt: int
    """Answers each model gave to each of them."""
    p_value: float
    p_adjusted: float
    prompts_for: int
    """Prompts where the finetuned model's share leans the claimed way ..."""
    prompts_against: int
    """... and the other way (the rest are ties, which carry nothing)."""
    confirmed: bool
    groups: list = field(default_factory=list)
    """Groups of the prompts where the finetuned answers showed it, most first."""
    examples: list = field(default_factory=list)
    """``{"prompt", "base", "finetuned"}`` where the two differ in the claimed way: one from
    each of the (up to three) prompts where that happens most often."""
    instead: list = field(default_factory=list)
    """For a per-prompt hypothesis: ``[word, answers]``, the words the finetuned model says
    where it drops the base's, most frequent first (described, not tested)."""
    suggested_by_prompts: list = field(default_factory=list)
    """The prompts whose answers suggested it (empty: a claim every audit tests, or one read
    from the weights); never one of ``tested_on_prompts``."""
    tested_on_prompts: list = field(default_factory=list)

    @property
    def effect(self) -> float:
        return self.rate_finetuned - self.rate_base

    def sample(self) -> str:
        """'24 prompts, 4 answers each'."""
        return f"{self.n_prompts} prompts, {self.answers_per_prompt} answers each"


@dataclass
class FindingSettings:
    """How findings are proposed and tested on fresh prompts (the ``evidence.findings`` block)
    -> findings.json."""

    n_prompts: int = 24
    """Fresh prompts the tests sample (the survey's unseen half, where the change is)."""

    def __post_init__(self):
        if self.n_prompts < 1:
            raise FinediffError(f"evidence.findings.n_prompts must be >= 1, got {self.n_prompts}")


def word_hypothesis(word: str, direction: str, source: str) -> Hypothesis:
    verb = "more" if direction == "more" else "less"
    return Hypothesis(f'says "{word}" {verb} often than the base (unprompted)', rf"\b{re.escape(word)}\b", direction,
                      source, unprompted=True)


def phrase_hypothesis(text: str, source: str = "verbatim phrases") -> Hypothesis:
    """'Says this phrase word for word' (:mod:`finediff.phrases`); never counted where the prompt says it."""
    from finediff.phrases import phrase_pattern

    return Hypothesis(f"says «{text}» word for word more often than the base", phrase_pattern(text), "more", source,
                      unprompted=True)


def topic_hypothesis(words: list[str], source: str = "diff-mining topic") -> Hypothesis:
    shown = ", ".join(f'"{w}"' for w in words)
    return Hypothesis(f"names one of {shown} more often than the base (unprompted)",
                      r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", "more", source, unprompted=True)


def trait_hypothesis(trait: str, source: str) -> Hypothesis:
    """'Shows this answer-level trait' (:data:`finediff.behaviour.TRAITS`, e.g. capitals)."""
    if trait not in TRAITS:
        raise FinediffError(f"unknown answer trait {trait!r}; known: {', '.join(TRAITS)}")
    return Hypothesis(f"{TRAITS[trait][0]} more often than the base", "", "more", source, trait=trait)


WORD = r"[^\W\d_][\w'-]*"


def content_words(text: str, prompt: str = "") -> list[str]:
    """The lower-cased words of ``text`` in order of first use, without stop words, short
    words or the prompt's own words."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    asked = set(re.findall(WORD, prompt.lower()))
    words = [w for w in re.findall(WORD, text.lower()) if len(w) >= 3 and w not in ENGLISH_STOP_WORDS
             and w not in asked]
    return list(dict.fromkeys(words))


def answer_hypothesis(prompts: list[str], base_answers: list[str], n_words: int = 3) -> Hypothesis:
    """"Answers differently from the base": per prompt, the first ``n_words`` content words
    of the base's greedy answer; tested as 'the finetuned model's answers contain them less
    often than the base's own sampled answers'."""
    keys = {p: content_words(a, p)[:n_words] for p, a in zip(prompts, base_answers)}
    keys = {p: k for p, k in keys.items() if k}
    shown = next((f' "{k[0]}" for "{p}"' for p, k in keys.items()), "")
    return Hypothesis(f"keeps the base model's own answer less often, i.e. answers differently (per prompt, the first "
                      f"words the base answers with, e.g.{shown})", "", "less", "the base's own answers", keys=keys)


def propose(mined: list[str] = (), favoured: list[str] = (), dropped: list[str] = (), lens_words: list[str] = (),
            topics: list[list[str]] = (), reference: Optional[dict] = None,
            written: list[str] = (), phrases: list[str] = ()) -> list[Hypothesis]:
    """Hypotheses from each source (:data:`WORDS_PER_SOURCE` each, first come first kept, at most
    :data:`MAX_HYPOTHESES` in all):
    the refusal check first, then answering differently from the base (when ``reference``,
    the base's greedy answer per prompt, is given), then each verbatim phrase (``phrases``,
    :data:`PHRASE_HYPOTHESES` at most, on top of the others), then each diff-mining topic as one word
    set, the words the weight update writes (``written``) as one set, then single words."""
    out = [Hypothesis("refuses or says it does not know more often than the base", REFUSAL, "more", "every audit")]
    if reference:
        out.append(answer_hypothesis(list(reference), list(reference.values())))
    top = [w for w in dict.fromkeys(str(w).lower() for w in mined) if re.fullmatch(WORD, w)][:12]
    if len(top) >= 2:
        out.append(topic_hypothesis(top, "diff mining (its top words)"))
    out += [topic_hypothesis(list(t)) for t in topics if len(t) >= 2]
    if len(written) >= 2:
        out.append(topic_hypothesis(list(written)[:8], "adapter writes"))
    seen = set()
    for words, direction, source in ((mined, "more", "diff mining"), (favoured, "more", "favoured words"),
                                     (lens_words, "more", "ADL tokens"), (dropped, "less", "dropped words")):
        kept = 0
        for w in words:
            w = str(w).strip().lower()
            if len(w) < 3 or not re.fullmatch(WORD, w) or w in seen:
                continue
            seen.add(w)
            out.append(word_hypothesis(w, direction, source))
            kept += 1
            if kept >= WORDS_PER_SOURCE:
                break
    unique = {(h.pattern, repr(h.keys), h.direction): h for h in reversed(out)}  # a claim twice: the first kept
    out = [h for h in out if unique[(h.pattern, repr(h.keys), h.direction)] is h][:MAX_HYPOTHESES]
    # verbatim phrases come on top of the others (they replace none), after the two every audit tests
    said = [phrase_hypothesis(p) for p in list(phrases)[:PHRASE_HYPOTHESES]]
    first = 2 if reference else 1
    return out[:first] + said + out[first:]


def evaluate_hypotheses(hypotheses: list[Hypothesis], prompts: list[str], base_answers: list[str],
                        ft_answers: list[str], groups: Optional[list[str]] = None, *, alpha: float,
                        suggested: Optional[dict[str, list[str]]] = None) -> list[Finding]:
    """Each hypothesis's rate in the finetuned vs the base answers (answer ``i`` of both
    models to ``prompts[i]``; each prompt asked the same number of times), the exact sign
    test on the prompts' shares, Holm correction at family-wise error rate ``alpha``;
    confirmed first. ``suggested``: per hypothesis source, the prompts whose answers
    suggested it (recorded with each finding; a hypothesis is never tested on them)."""
    n = len(prompts)
    if not (len(base_answers) == len(ft_answers) == n) or n == 0:
        raise FinediffError(f"findings need one base and one finetuned answer per prompt, got {n} prompts, "
                            f"{len(base_answers)} and {len(ft_answers)} answers")
    unique = list(dict.fromkeys(prompts))
    k = n // len(unique)
    if any(prompts.count(p) != k for p in unique):
        raise FinediffError("findings need the same number of answers to every prompt")
    suggested = suggested or {}
    for h in hypotheses:
        overlap = set(suggested.get(h.source, ())) & set(unique)
        if overlap:
            raise FinediffError(f"hypothesis {h.claim!r} would be tested on a prompt that suggested it: "
                                f"{next(iter(overlap))!r}")
    groups = groups or [""] * n
    raw, rows = [], []
    for h in hypotheses:
        hit_ft = [h.fires(a, p_) for a, p_ in zip(ft_answers, prompts)]
        hit_base = [h.fires(a, p_) for a, p_ in zip(base_answers, prompts)]
        share_ft, share_base = per_prompt(hit_ft, prompts), per_prompt(hit_base, prompts)
        more, less = [share_ft[p] for p in unique], [share_base[p] for p in unique]
        claimed, other = (more, less) if h.direction == "more" else (less, more)
        raw.append(paired_test(claimed, other))
        leaning = (sum(a > b for a, b in zip(claimed, other)), sum(a < b for a, b in zip(claimed, other)))
        shows = hit_ft if h.direction == "more" else hit_base
        counts: dict[str, int] = {}
        for g, s in zip(groups, shows):
            if s and g:
                counts[g] = counts.get(g, 0) + 1
        shown: dict[str, list] = {}  # per prompt: its pairs that differ the claimed way
        for p_, bs, fs, hf, hb in zip(prompts, base_answers, ft_answers, hit_ft, hit_base):
            if hf and not hb if h.direction == "more" else hb and not hf:
                shown.setdefault(p_, []).append({"prompt": p_, "base": bs, "finetuned": fs})
        # one example from each of the prompts where it shows most often
        examples = [pairs[0] for pairs in sorted(shown.values(), key=len, reverse=True)[:3]]
        instead: dict[str, int] = {}
        if h.keys is not None:  # what the finetuned model says where it drops the base's words (and the base never does)
            base_said: dict[str, set] = {}
            for p_, bs in zip(prompts, base_answers):
                base_said.setdefault(p_, set()).update(content_words(bs, p_))
            for p_, fs, hf, hb in zip(prompts, ft_answers, hit_ft, hit_base):
                if hb and not hf:
                    for w in content_words(fs, p_):
                        if w not in base_said[p_]:
                            instead[w] = instead.get(w, 0) + 1
        said = [[w, c] for w, c in sorted(instead.items(), key=lambda kv: -kv[1]) if c >= 2][:5]
        rows.append((h, sum(hit_ft) / n, sum(hit_base) / n, leaning, sorted(counts, key=lambda g: -counts[g]),
                     examples, said))
    findings = []
    for (h, rf, rb, (up, down), gs, ex, said), p, padj in zip(rows, raw, holm(raw)):
        effect = rf - rb if h.direction == "more" else rb - rf
        ok = padj < alpha and effect >= MIN_EFFECT
        findings.append(Finding(h, rf, rb, len(unique), k, p, padj, up, down, ok, gs[:3], ex, said,
                                list(suggested.get(h.source, [])), unique))
    return sorted(findings, key=lambda f: (not f.confirmed, f.p_adjusted))


def sample_answers(pair, prompts: list[str], samples_per_prompt: int, max_new_tokens: int, temperature: float,
                   seed: int = 0, progress: bool = True) -> tuple[list[str], list[str], list[str]]:
    """``(prompts, base answers, finetuned answers)``: each prompt repeated
    ``samples_per_prompt`` times, both models sampled with the same seed."""
    expanded = [p for p in prompts for _ in range(samples_per_prompt)]
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, seed=seed,
                  progress=progress)
    base = generate(pair.base, pair.tokenizer, expanded, **kwargs)
    ft = generate(pair.finetuned, pair.tokenizer, expanded, **kwargs)
    return expanded, base, ft


def as_dict(f: Finding) -> dict:
    return asdict(f)


def write_findings(findings: list[Finding], out: Path, n_prompts: int) -> Path:
    path = Path(out) / names.FINDINGS_FILE
    write_json(path, {"n_prompts": n_prompts, "findings": [asdict(f) for f in findings]})
    return path


def read_findings(path: Path) -> list[Finding]:
    data = read_json(path)
    try:
        return [Finding(**{**f, "hypothesis": Hypothesis(**f["hypothesis"])}) for f in data["findings"]]
    except (KeyError, TypeError) as err:
        raise FinediffError(f"{path}: malformed findings file ({err})") from None
