"""Every claim a run's first screen can state, in one list: the survey's groups (where the
divergence concentrates), the findings (behaviours) and the conditions (what turns a
behaviour on), each with its step, corrected p-value and whether it was confirmed within its
step's share of the audit's error budget (:data:`finediff.stats.ALPHA_SHARES`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from finediff import names
from finediff.conditions import read_conditions
from finediff.findings import read_findings
from finediff.survey import has_survey, read_survey

BEHAVIOUR_STEPS = ("findings", "conditions")
"""The steps whose claims name a behaviour (a group's claim names where the answers diverge)."""


@dataclass
class Claim:
    step: str
    """``groups``, ``findings`` or ``conditions``."""
    text: str
    p_adjusted: float
    confirmed: bool
    n_prompts: int

    @property
    def behaviour(self) -> bool:
        return self.step in BEHAVIOUR_STEPS


def audit_claims(run: Path) -> list[Claim]:
    """The claims of a run folder, tested ones only (a condition that showed no behaviour was
    never tested)."""
    run = Path(run)
    out: list[Claim] = []
    if has_survey(run):
        out += [Claim("groups", f"the answers diverge most on {g.group}", g.p_value, g.changed, g.n)
                for g in read_survey(run).groups]
    if (run / names.FINDINGS_FILE).is_file():
        out += [Claim("findings", f.hypothesis.claim, f.p_adjusted, f.confirmed, f.n_prompts)
                for f in read_findings(run / names.FINDINGS_FILE)]
    if (run / names.CONDITIONS_FILE).is_file():
        out += [Claim("conditions", f"{c.condition.describe()}, the finetuned model {c.behaviour()}", c.p_adjusted,
                      c.confirmed, c.n_prompts) for c in read_conditions(run / names.CONDITIONS_FILE) if c.n_prompts]
    return out
