"""The report's first screen: what changed, where, how strongly, and how sure, in words.

It is written only from what the run measured: the survey's groups and their tests
(:mod:`finediff.survey`), the findings tested on fresh prompts (:mod:`finediff.findings`)
and, for examples, the findings' own answers or the divergent dataset's records on
readable prompts. When no group stands out and no finding held up, it says that nothing
changed measurably, with the numbers that say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from finediff import names
from finediff.conditions import ConditionResult, read_conditions
from finediff.findings import Finding, read_findings
from finediff.io import markdown_table
from finediff.records import CategoryResult, DivergentRecord, read_dataset
from finediff.survey import Survey, has_survey, read_survey


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return (text if len(text) <= n else text[: n - 1] + "…").replace("|", "\\|")


def _p(p: float) -> str:
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


@dataclass
class Verdict:
    """What the first screen says, as data (the dashboard shows the same)."""

    changed: bool
    confidence: str
    """``high``, ``moderate``, ``low`` or ``none``."""
    paragraph: str
    confirmed: list[Finding] = field(default_factory=list)
    unconfirmed: list[Finding] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)
    """``{"prompt", "base", "finetuned"}`` side by side."""
    conditions: list[ConditionResult] = field(default_factory=list)
    """Confirmed conditions (the input that turns a behaviour on)."""


def _examples(confirmed: list[Finding], records: list[DivergentRecord], readable: set[str], n: int = 3) -> list[dict]:
    out, seen = [], set()
    for f in confirmed:
        for e in f.examples:
            if e["prompt"] not in seen and len(out) < n:
                seen.add(e["prompt"])
                out.append(e)
    for r in records:
        if len(out) >= n:
            break
        if r.prompt in readable and r.prompt not in seen and r.amplification is None:
            seen.add(r.prompt)
            out.append({"prompt": r.prompt, "base": r.generation_1, "finetuned": r.generation_2})
    return out


def claim(f: Finding) -> str:
    """A finding's claim, with what the finetuned model says in place of the base's words
    when the test recorded that."""
    if not f.instead:
        return f.hypothesis.claim
    return f.hypothesis.claim + "; in its place it says " + ", ".join(f'"{w}" ({c}x)' for w, c in f.instead[:4])


def _sentences(text: str) -> list[str]:
    return [x for x in re.split(r"(?<=[.!?])\s+|\n+", " ".join(str(text).split(" "))) if x.strip()]


def how_it_shows(f: Finding) -> str:
    """Where in the answer a finding shows and what the base says there, from the
    finding's own example answers: "in the first sentence of its answer, e.g. «...» where
    the base says «...»" (empty when no example shows it)."""
    if f.hypothesis.direction != "more":
        return ""
    shown = []
    for e in f.examples:
        sentences = _sentences(e["finetuned"])
        at = next((i for i, x in enumerate(sentences) if f.hypothesis.fires(x, e["prompt"])), None)
        if at is not None:
            shown.append((at, sentences[at], _sentences(e["base"])))
    if not shown:
        return ""
    first = sum(at == 0 for at, _, _ in shown)
    where = ("in the first sentence of its answer" if first == len(shown) else
             "mostly in the first sentence of its answer" if first * 2 > len(shown) else "further into its answer")
    at, sentence, base = shown[0]
    instead = base[min(at, len(base) - 1)] if base else ""
    return (f"{where}, e.g. «{_short(sentence, 90)}»"
            + (f" where the base says «{_short(instead, 70)}»" if instead else ""))


def finding_words(f: Finding) -> set[str]:
    """The words a word or word-set finding counts (empty for the others)."""
    h = f.hypothesis
    if h.keys is not None or not h.unprompted:
        return set()
    return {w.replace("\\", "") for w in re.findall(r"[\w'\\-]+", h.pattern.replace("\\b", " "))}


def _same_behaviour(f: Finding, g: Finding) -> bool:
    """Two findings state one behaviour when they share a word, or when the stronger one's
    detector fires on every finetuned example answer of the other."""
    words = finding_words(f)
    if words and words & finding_words(g):
        return True
    return bool(f.examples) and g.hypothesis.direction == f.hypothesis.direction == "more" and all(
        g.hypothesis.fires(e["finetuned"], e["prompt"]) for e in f.examples)


def distinct(confirmed: list[Finding]) -> list[Finding]:
    """One finding per distinct behaviour (:func:`_same_behaviour`), stated by the strongest
    of its findings (lowest corrected p, then largest effect)."""
    groups: list[list[Finding]] = []
    for f in sorted(confirmed, key=lambda f: (f.p_adjusted, -f.effect)):
        home = next((g for g in groups if _same_behaviour(f, g[0])), None)
        if home is None:
            groups.append([f])
        else:
            home.append(f)
    return [g[0] for g in groups]


BROAD_SHARE = 0.5
"""A change is called broad only when a confirmed behaviour shows in at least this share of
the finetuned model's answers to fresh prompts: a median divergence alone is not enough, since
a finetune that changed no behaviour also diverges everywhere (the no-op organism: 0.25 nats
per token for the median prompt)."""


CONDITIONS_STATED = 2
"""Distinct conditions the first screen states in full (the rest are counted)."""
FINDINGS_STATED = 3
"""Distinct confirmed behaviours the first screen states in full (the rest are counted)."""


def _more(n_distinct: int, n_same: int, what: str) -> str:
    """'(2 more confirmed conditions turn on other words; 1 more turns on the same words.)'"""
    parts = []
    if n_distinct:
        parts.append(f"{n_distinct} more confirmed {what}{'s' if n_distinct > 1 else ''} "
                     f"{'show' if n_distinct > 1 else 'shows'} other words, in the report below")
    if n_same:
        parts.append(f"{n_same} more confirmed {what}{'s turn' if n_same > 1 else ' turns'} on the same words")
    return f" ({'; '.join(parts)}.)" if parts else ""


def condition_sentence(conditions: list[ConditionResult]) -> str:
    """The first screen's words on conditions: each confirmed one, or plainly that none was
    found (empty when no condition was searched)."""
    # of the conditions that turn on the same words, the string searched from the behaviour
    # is named first: it is aimed at the behaviour, the other leads only came near it
    found = sorted([c for c in conditions if c.confirmed], key=lambda c: not c.trigger)
    if found:
        shown: list[ConditionResult] = []
        for c in found:  # one sentence per behaviour: the first (strongest) condition that shows it
            if not any(set(c.words) & set(s.words) for s in shown):
                shown.append(c)
        stated = shown[:CONDITIONS_STATED]
        return " ".join(f"**{c.statement()}.**" for c in stated) + _more(
            len(shown) - len(stated), len(found) - len(shown), "condition").replace(
            "turns on the same words", "turns on the same words as one stated").replace(
            "turn on the same words", "turn on the same words as those stated")
    if conditions:
        tested = sum(1 for c in conditions if c.words)
        return (f"No condition that turns a behaviour on was found ({len(conditions)} candidate conditions "
                f"screened, {tested} tested on fresh prompts).")
    return ""


def verdict(survey: Optional[Survey], findings: list[Finding], records: list[DivergentRecord] = (),
            comparison: list[CategoryResult] = (), conditions: list[ConditionResult] = ()) -> Verdict:
    """The first screen's verdict from a run's survey, findings, conditions and divergent
    dataset (a run told where to look has no survey: its category comparison stands in)."""
    found = [c for c in conditions if c.confirmed]
    confirmed = [f for f in findings if f.confirmed]
    unconfirmed = [f for f in findings if not f.confirmed]
    changed_groups = survey.changed if survey else []
    readable = {t.text for t in survey.texts} if survey else set()
    top_text = max((t.divergence for t in survey.texts), default=0.0) if survey else 0.0
    parts = []
    if survey is not None and not confirmed and not found:
        # No behaviour held up: a finetune that changed nothing but its wording (a LoRA trained on
        # the base's own answers, or random small weights) lands here, however far its
        # distributions moved; where the divergence concentrates is said, as such.
        top = survey.groups[0] if survey.groups else None
        best_p = min((g.p_value for g in survey.groups), default=1.0)
        parts.append(f"**No change found.** No behaviour held up on fresh prompts: "
                     + (f"none of the {len(findings)} candidate findings" if findings else "no candidate finding was tested")
                     + (f" and none of the {sum(1 for c in conditions if c.n_prompts)} tested conditions"
                        if any(c.n_prompts for c in conditions) else "") + ".")
        parts.append(f"The answers' distributions differ from the base's by {survey.median_divergence:.4f} nats per "
                     f"token for the median of {len(survey.texts)} prompts in {len(survey.groups)} groups"
                     + (f", {top.mean_divergence:.4f} in the highest group ({top.group})" if top else "") + ", "
                     + ("and most on " + ", ".join(f"**{g.group}** ({g.ratio:.1f}x the median prompt, corrected p = "
                                                   f"{_p(g.p_value)})" for g in changed_groups[:4])
                        if changed_groups else f"and no group stands out (smallest corrected p = {_p(best_p)})")
                     + "; a finetune trained on the base's own answers differs this way too, with no behaviour a "
                       "test can name.")
        if conditions:
            parts.append(condition_sentence(conditions))
        return Verdict(False, "none", " ".join(parts), confirmed, unconfirmed, [])
    broad = survey is not None and survey.broad and any(f.rate_finetuned >= BROAD_SHARE for f in confirmed)
    if found:  # a behaviour behind a condition is the finding: it leads
        parts.append("**What changed.** " + condition_sentence(conditions))
    lead = "" if found else "**What changed.** "
    if broad:
        lowest = survey.groups[-1] if survey.groups else None
        parts.append(f"{lead}The change is broad: the finetuned model's answers diverge from the base's "
                     f"by {survey.median_divergence:.3f} nats per token for the median prompt"
                     + (f", and by {lowest.mean_divergence:.3f} even in the least changed group ({lowest.group})"
                        if lowest else "") + ", and a confirmed behaviour shows in most of its answers.")
        if changed_groups:
            parts.append("It is strongest on " + ", ".join(f"**{g.group}** ({g.ratio:.1f}x the median prompt)"
                                                           for g in changed_groups[:4]) + ".")
    elif changed_groups:
        where = ", ".join(f"**{g.group}** ({g.source}; {g.ratio:.1f}x the median prompt, corrected p = "
                          f"{_p(g.p_value)})" for g in changed_groups[:4])
        parts.append(f"{lead}The finetune changed the model's answers most on {where}.")
    elif survey is not None and survey.broad:
        parts.append(f"{lead}The answers' wording differs from the base's everywhere "
                     f"({survey.median_divergence:.3f} nats per token for the median prompt), as a finetune that "
                     "changed no behaviour shows too" + ("." if found else "; no group stands out."))
    elif survey is not None and survey.groups:
        where = ", ".join(f"**{g.group}** ({g.source}; {g.ratio:.1f}x the median prompt)" for g in survey.groups[:3])
        parts.append(f"{lead}The finetuned model's answers diverge most on {where}, but few prompts in "
                     "each, so no group stands out significantly on its own.")
    elif comparison:
        top = comparison[0]
        parts.append(f"**What changed.** This run was told where to look (no survey). Of the {len(comparison)} "
                     f"categories compared, the answers diverge most on **{top.category}** (mean per-token KL "
                     f"{top.mean_divergence:.3f}, 95% CI [{top.ci_low:.3f}, {top.ci_high:.3f}]); the most divergent "
                     "examples follow.")
    else:
        parts.append("**What changed.** This run was told where to look, and no survey or comparison ranked the "
                     "groups; the most divergent examples follow.")
    if conditions and not found:
        parts.append(condition_sentence(conditions))
    if confirmed:
        shown = distinct(confirmed)
        stated = shown[:FINDINGS_STATED]
        said = "; ".join(f"it {claim(f)} ({f.rate_finetuned:.0%} of its answers against {f.rate_base:.0%}"
                         f" of the base's, corrected p = {_p(f.p_adjusted)}"
                         + (f", mostly on {', '.join(f.groups[:2])}" if f.groups else "") + ")"
                         + (f", {how_it_shows(f)}" if how_it_shows(f) else "")
                         for f in stated)
        parts.append(f"On {confirmed[0].sample()} (fresh prompts no earlier step looked at): {said}."
                     + _more(len(shown) - len(stated), len(confirmed) - len(shown), "finding"))
    elif findings and found:
        parts.append(f"Without the condition, none of the {len(findings)} candidate findings held up on fresh "
                     "prompts: the behaviour shows under it.")
    elif findings:
        parts.append(f"None of the {len(findings)} candidate findings held up on fresh prompts, so the change is "
                     "shown by the examples only.")
    if survey is not None and survey.mining is not None and survey.mining.words:
        words = ", ".join(f'"{w.word}"' for w in survey.mining.words[:8])
        parts.append(f"The words whose logits the finetune raises most in its answers (diff mining): {words}.")
    strong = [f for f in confirmed if f.p_adjusted < 0.001] + [c for c in found if c.p_adjusted < 0.001]
    what = "a finding" if confirmed else "a condition"
    if strong:
        what = "a finding" if any(f.p_adjusted < 0.001 for f in confirmed) else "a condition"
        confidence, why = "high", f"{what} held up on fresh prompts at corrected p < 0.001"
    elif confirmed or found:
        confidence, why = "moderate", f"{what} held up on fresh prompts"
    elif any(g.ratio >= 5 for g in changed_groups):
        confidence, why = "moderate", "a group stands out strongly, but no worded finding held up"
    elif changed_groups:
        confidence, why = "low", "a group stands out, but no worded finding held up"
    elif survey is None:
        confidence, why = "low", "no finding was tested: an audit (no data.categories) tests them"
    else:
        confidence, why = "low", "some answers diverge strongly, but no group stands out and no finding held up"
    parts.append(f"How sure: **{confidence}** ({why}).")
    examples = [e for c in found for e in c.examples[:1]] + _examples(confirmed, list(records), readable)
    return Verdict(True, confidence, " ".join(parts), confirmed, unconfirmed, examples[:3], found)


def read_verdict(run: Path) -> Optional[Verdict]:
    """The verdict of a run folder, or None when it has none of a survey, findings, a
    category comparison or a divergent dataset."""
    run = Path(run)
    survey = read_survey(run) if has_survey(run) else None
    findings = read_findings(run / names.FINDINGS_FILE) if (run / names.FINDINGS_FILE).is_file() else []
    comparison = CategoryResult.read_csv(run / names.COMPARISON_CSV) if (run / names.COMPARISON_CSV).is_file() else []
    data = run / names.DIVERGENT_DATASET_JSONL
    records = read_dataset(data) if data.is_file() else []
    conditions = read_conditions(run / names.CONDITIONS_FILE) if (run / names.CONDITIONS_FILE).is_file() else []
    if survey is None and not findings and not comparison and not records:
        return None
    return verdict(survey, findings, records, comparison, conditions)


def first_screen(v: Verdict) -> list[str]:
    """Markdown lines: the paragraph, side-by-side examples, the confirmed findings."""
    lines = [v.paragraph, ""]
    if v.examples:
        lines += markdown_table(["prompt", "base", "finetuned"],
                                [[_short(e["prompt"], 100), _short(e["base"], 160), _short(e["finetuned"], 160)]
                                 for e in v.examples])
        lines.append("")
    if v.confirmed:
        lines += [f"Confirmed findings ({v.confirmed[0].sample()}; exact sign test on the prompts' shares of answers "
                  "that show it, Holm-corrected within the findings' share of the error budget):", ""]
        lines += markdown_table(["the finetuned model ...", "finetuned", "base", "corrected p", "where", "suggested by"],
                                [[_short(claim(f), 300), f"{f.rate_finetuned:.0%}", f"{f.rate_base:.0%}",
                                  _p(f.p_adjusted), ", ".join(f.groups) or "-", f.hypothesis.source]
                                 for f in v.confirmed])
        lines.append("")
    return lines


def unconfirmed_lines(v: Verdict) -> list[str]:
    """Markdown lines for the candidate findings that did not hold up."""
    if not v.unconfirmed:
        return []
    return markdown_table(["the finetuned model ...", "finetuned", "base", "corrected p", "suggested by"],
                          [[f.hypothesis.claim, f"{f.rate_finetuned:.0%}", f"{f.rate_base:.0%}", _p(f.p_adjusted),
                            f.hypothesis.source] for f in v.unconfirmed])
