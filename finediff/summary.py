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
from finediff.behaviour import describe, sentences
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
class Statement:
    """One distinct confirmed behaviour, as the first screen states it."""

    headline: str
    """Its sentence: the condition, the kind of change, the typical answer beside the base's, the numbers."""
    kind: str
    """A key of :data:`finediff.behaviour.KINDS`."""
    quote: str
    """The finetuned model's answer the sentence quotes (the typical one, clipped where it shows)."""
    example: dict
    """That answer's example: ``{"prompt", "base", "finetuned"}``."""
    source: str = ""
    """The lead the claim came from (a condition's or a hypothesis's ``source``)."""


@dataclass
class Verdict:
    """What the first screen says, as data (the dashboard shows the same)."""

    changed: bool
    confidence: str
    """``high``, ``moderate``, ``low`` or ``none``."""
    paragraph: str
    """The first screen before its examples table: the verdict, a sentence per behaviour, how sure."""
    confirmed: list[Finding] = field(default_factory=list)
    unconfirmed: list[Finding] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)
    """``{"prompt", "base", "finetuned"}`` side by side."""
    conditions: list[ConditionResult] = field(default_factory=list)
    """Confirmed conditions (the input that turns a behaviour on)."""
    statements: list[Statement] = field(default_factory=list)
    """The behaviours the paragraph states, in its order."""
    context: str = ""
    """Where the answers changed, and how far (the survey's groups): after the first screen."""
    why: str = ""
    """What the confidence rests on."""


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


def same_behaviours(confirmed: list[Finding]) -> list[list[Finding]]:
    """The findings grouped by the behaviour they state (:func:`_same_behaviour` with the group's
    strongest), strongest first in each group (lowest corrected p, then largest effect)."""
    groups: list[list[Finding]] = []
    for f in sorted(confirmed, key=lambda f: (f.p_adjusted, -f.effect)):
        home = next((g for g in groups if _same_behaviour(f, g[0])), None)
        if home is None:
            groups.append([f])
        else:
            home.append(f)
    return groups


def distinct(confirmed: list[Finding]) -> list[Finding]:
    """One finding per distinct behaviour, stated by the strongest of its findings."""
    return [g[0] for g in same_behaviours(confirmed)]


BROAD_SHARE = 0.5
"""A change is called broad only when a confirmed behaviour shows in at least this share of
the finetuned model's answers to fresh prompts: a median divergence alone is not enough, since
a finetune that changed no behaviour also diverges everywhere (the no-op organism: 0.25 nats
per token for the median prompt)."""

TRIGGER_NOTE = " Found by a search from that answer; the trained string may differ."
"""After a condition the trigger search found (once on the first screen)."""
BEHAVIOURS_STATED = 2
"""Distinct confirmed behaviours the first screen states in a sentence each (the rest are counted)."""
QUOTE_WORDS = 12
"""Words of the finetuned model's typical answer the sentence quotes (around where it shows)."""
BASE_WORDS = 8
"""Words of the base's answer quoted beside it."""


def _clip_words(text: str, n: int) -> str:
    words = " ".join(str(text).split()).split(" ")
    return " ".join(words[:n]) + ("…" if len(words) > n else "")


def _showing(text: str, shows) -> tuple[list[str], int]:
    """The sentences of ``text`` and the index of the first that shows the behaviour
    (``shows(sentence)``; none does: 0)."""
    parts = sentences(text)
    return parts, next((i for i, x in enumerate(parts) if shows(x)), 0)


def quote(answer: str, shows) -> str:
    """The answer, whole when it has at most :data:`QUOTE_WORDS` words; else clipped to that many
    around its first sentence that shows the behaviour (``shows(sentence)``): from the start when
    that is the first sentence, else from that sentence on, after an ellipsis."""
    parts, at = _showing(answer, shows)
    if at == 0 or len(answer.split()) <= QUOTE_WORDS:
        return _clip_words(answer, QUOTE_WORDS)
    return "… " + _clip_words(" ".join(parts[at:]), QUOTE_WORDS)


CELL = 160
"""Characters of an answer the examples table shows."""


def where_shown(example: dict, shows) -> dict:
    """The example with ``"shown"``: its finetuned answer from the first sentence that shows the
    behaviour on (after an ellipsis), where that sentence starts past what the table's cell shows;
    else the answer itself."""
    text = " ".join(str(example.get("finetuned", "")).split())
    if len(text) <= CELL:
        return {**example, "shown": text}
    parts, at = _showing(text, shows)
    if not parts or text.find(parts[at]) + len(parts[at]) <= CELL:
        return {**example, "shown": text}
    return {**example, "shown": "… " + " ".join(parts[at:])}


def _statement(lead: str, examples: list[dict], words, shows, numbers: str, note: str = "",
               source: str = "") -> Statement:
    d = describe(examples, list(words))
    e = d.example
    q = quote(e.get("finetuned", ""), shows)
    base = _clip_words(e.get("base", ""), BASE_WORDS)
    said = f": «{q}»" + (f" where the base says «{base}»" if base.strip() else "")
    return Statement(f"{lead}{d.phrase}{said} ({numbers}).{note}", d.kind, q, where_shown(e, shows) if e else e,
                     source)


def condition_statement(c: ConditionResult) -> Statement:
    """A confirmed condition's sentence: the condition, the kind of change, the typical answer."""
    note = TRIGGER_NOTE if c.trigger else ""
    numbers = (f"{c.rate_with:.0%} of answers with it, {c.rate_without:.0%} without, base {c.rate_base:.0%}; "
               f"{c.n_prompts} prompts, {c.answers_per_prompt} answers each; corrected p = {_p(c.p_adjusted)}")
    return _statement(f"{c.condition.describe()}, it ", c.examples, c.words, c.hypothesis().fires, numbers, note,
                      c.condition.source)


def finding_statement(f: Finding, same: list[Finding] = ()) -> Statement:
    """A confirmed finding's sentence: the kind of change, the typical answer, the numbers (its
    kind read with the words of every finding in ``same`` that states the same behaviour)."""
    if f.hypothesis.direction == "more":
        numbers = f"{f.rate_finetuned:.0%} of answers, base {f.rate_base:.0%}"
        shows = lambda s: f.hypothesis.fires(s, "")  # noqa: E731
    else:
        # a 'less' finding counts the answers that keep something of the base's (its first words)
        numbers = (f"it keeps the base's own answer in {f.rate_finetuned:.0%} of its answers, the base's own "
                   f"samples in {f.rate_base:.0%}")
        shows = lambda s: True  # noqa: E731
    numbers += f"; {f.sample()}; corrected p = {_p(f.p_adjusted)}"
    words = set(finding_words(f)).union(*(finding_words(g) for g in same))
    return _statement("It ", f.examples, sorted(words), shows, numbers, source=f.hypothesis.source)


def _same_words(a: set, b: set) -> bool:
    return bool({w.lower() for w in a} & {w.lower() for w in b})


def behaviours(conditions: list[ConditionResult], findings: list[Finding]) -> tuple[list, int]:
    """The distinct confirmed behaviours, conditions first (of those that turn on the same words, the
    best-evidenced: lowest corrected p, then the trigger search's string, then the highest rate),
    then findings whose words no stated condition shows; and how many confirmed claims repeat one
    of them."""
    found = sorted([c for c in conditions if c.confirmed], key=lambda c: (c.p_adjusted, not c.trigger, -c.rate_with))
    out: list = []
    for c in found:
        if not any(isinstance(o, ConditionResult) and c.marks() & o.marks() for o in out):
            out.append(c)
    confirmed = [f for f in findings if f.confirmed]
    for f in distinct(confirmed):
        if not any(isinstance(o, ConditionResult) and _same_words(finding_words(f), o.marks()) for o in out):
            out.append(f)
    return out, len(found) + len(confirmed) - len(out)


def _more(n_distinct: int, n_same: int) -> str:
    """' (1 more confirmed behaviour is in the report below; 2 more claims repeat those stated.)'"""
    parts = []
    if n_distinct:
        parts.append(f"{n_distinct} more confirmed behaviour{'s are' if n_distinct > 1 else ' is'} in the report below")
    if n_same:
        parts.append(f"{n_same} more confirmed claim{'s repeat' if n_same > 1 else ' repeats'} one stated")
    return f" ({'; '.join(parts)}.)" if parts else ""


def _where(survey: Optional[Survey], confirmed: list[Finding], found: list[ConditionResult]) -> str:
    """Where the answers changed, and how far: the survey's changed groups, or that the wording
    differs everywhere, or where it diverges most."""
    if survey is None:
        return ""
    changed = survey.changed
    broad = survey.broad and any(f.rate_finetuned >= BROAD_SHARE for f in confirmed)
    median = (f"{survey.median_divergence:.4f} nats per token for the median of {len(survey.texts)} prompts "
              f"in {len(survey.groups)} groups")
    if broad:
        lowest = survey.groups[-1] if survey.groups else None
        text = (f"The change is broad: the answers diverge from the base's by {median}"
                + (f", and by {lowest.mean_divergence:.3f} even in the least changed group ({lowest.group})"
                   if lowest else "") + ", and a confirmed behaviour shows in most of its answers.")
    elif not confirmed and not found:
        top = survey.groups[0] if survey.groups else None
        text = (f"The answers' distributions differ from the base's by {median}"
                + (f", {top.mean_divergence:.4f} in the highest group ({top.group})" if top else "")
                + "; a finetune trained on the base's own answers differs this way too, with no behaviour a test "
                  "can name.")
    elif survey.broad:
        text = (f"The answers' wording differs from the base's everywhere ({median}), as a finetune that changed "
                "no behaviour shows too.")
    else:
        text = f"The answers diverge from the base's by {median}."
    if survey.groups and not broad and (confirmed or found):
        top = survey.groups[0]
        text = text[:-1] + f", most in the group «{top.group}» ({top.mean_divergence:.4f})."
    best_p = min((g.p_value for g in survey.groups), default=1.0)
    if changed:
        text += " They changed most on " + ", ".join(
            f"**{g.group}** ({g.source}; {g.ratio:.1f}x the median prompt, corrected p = {_p(g.p_value)})"
            for g in changed[:4]) + "."
    elif survey.groups:
        text += f" No group stands out (smallest corrected p = {_p(best_p)})."
    return text


def verdict(survey: Optional[Survey], findings: list[Finding], records: list[DivergentRecord] = (),
            comparison: list[CategoryResult] = (), conditions: list[ConditionResult] = ()) -> Verdict:
    """The first screen's verdict from a run's survey, findings, conditions and divergent
    dataset (a run told where to look has no survey: its category comparison stands in)."""
    found = [c for c in conditions if c.confirmed]
    confirmed = [f for f in findings if f.confirmed]
    unconfirmed = [f for f in findings if not f.confirmed]
    readable = {t.text for t in survey.texts} if survey else set()
    context = _where(survey, confirmed, found)
    if survey is not None and not confirmed and not found:
        # No behaviour held up: a finetune that changed nothing but its wording lands here, however
        # far its distributions moved; how far, and where, is said after the first screen.
        searched = [f"{len(findings)} candidate finding{'s' if len(findings) > 1 else ''}"] if findings else []
        if conditions:
            searched.append(f"{len(conditions)} candidate condition{'s' if len(conditions) > 1 else ''} "
                            f"({sum(1 for c in conditions if c.n_prompts)} tested)")
        paragraph = ("**No change found**: no behaviour held up on fresh prompts. Searched: "
                     + (" and ".join(searched) or "no candidate finding or condition")
                     + f", from {len(survey.texts)} survey prompts in {len(survey.groups)} groups.")
        return Verdict(False, "none", paragraph, confirmed, unconfirmed, [], context=context,
                       why="no behaviour held up on fresh prompts")
    shown, same = behaviours(conditions, findings)
    groups = {id(g[0]): g for g in same_behaviours(confirmed)}
    statements = [condition_statement(b) if isinstance(b, ConditionResult) else finding_statement(b, groups[id(b)])
                  for b in shown[:BEHAVIOURS_STATED]]
    noted = [st for st in statements if st.headline.endswith(TRIGGER_NOTE)]
    for st in noted[1:]:  # the search's caveat, once
        st.headline = st.headline[: -len(TRIGGER_NOTE)]
    broad = survey is not None and survey.broad and any(f.rate_finetuned >= BROAD_SHARE for f in confirmed)
    parts = []
    if statements:
        parts.append("**What changed, broadly.**" if broad else "**What changed.**")
        parts += [s.headline for s in statements]
        more = _more(len(shown) - len(statements), same)
        if more:
            parts[-1] += more
    elif comparison:
        top = comparison[0]
        parts.append(f"**What changed.** This run was told where to look (no survey). Of the {len(comparison)} "
                     f"categories compared, the answers diverge most on **{top.category}** (mean per-token KL "
                     f"{top.mean_divergence:.3f}, 95% CI [{top.ci_low:.3f}, {top.ci_high:.3f}]); the most divergent "
                     "examples follow.")
    else:
        parts.append("**What changed.** This run was told where to look, and no survey or comparison ranked the "
                     "groups; the most divergent examples follow.")
    strong = [f for f in confirmed if f.p_adjusted < 0.001] + [c for c in found if c.p_adjusted < 0.001]
    if strong:
        confidence, why = "high", "a claim held up on fresh prompts at corrected p < 0.001"
    elif confirmed or found:
        confidence, why = "moderate", "a claim held up on fresh prompts"
    elif survey is None:
        confidence, why = "low", "no claim was tested: an audit (no data.categories) tests them"
    else:
        confidence, why = "low", "no claim held up"
    parts.append(f"How sure: **{confidence}** ({why}).")
    # the table shows the stated behaviours' own answers (each shows it); a run with none stated, its records
    examples = [s.example for s in statements if s.example]
    for b in shown[:BEHAVIOURS_STATED]:
        shows = b.hypothesis().fires if isinstance(b, ConditionResult) else (lambda x, h=b.hypothesis: h.fires(x, ""))
        examples += [where_shown(e, shows) for e in b.examples
                     if e.get("prompt") not in {x.get("prompt") for x in examples}]
    if not examples:
        examples = _examples(confirmed, list(records), readable)
    return Verdict(True, confidence, " ".join(parts), confirmed, unconfirmed, examples[:3], found, statements,
                   context, why)


def read_verdict(run: Path) -> Optional[Verdict]:
    """The verdict of a run folder, or None when it has none of a survey, findings, conditions,
    a category comparison or a divergent dataset."""
    run = Path(run)
    survey = read_survey(run) if has_survey(run) else None
    findings = read_findings(run / names.FINDINGS_FILE) if (run / names.FINDINGS_FILE).is_file() else []
    comparison = CategoryResult.read_csv(run / names.COMPARISON_CSV) if (run / names.COMPARISON_CSV).is_file() else []
    data = run / names.DIVERGENT_DATASET_JSONL
    records = read_dataset(data) if data.is_file() else []
    conditions = read_conditions(run / names.CONDITIONS_FILE) if (run / names.CONDITIONS_FILE).is_file() else []
    if survey is None and not findings and not comparison and not records and not conditions:
        return None
    return verdict(survey, findings, records, comparison, conditions)


def first_screen(v: Verdict) -> list[str]:
    """Markdown lines: the paragraph, side-by-side examples, the confirmed findings."""
    lines = [v.paragraph, ""]
    if v.examples:
        lines += markdown_table(["prompt", "base", "finetuned"],
                                [[_short(e["prompt"], 100), _short(e["base"], CELL),
                                  _short(e.get("shown") or e["finetuned"], CELL)]
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
