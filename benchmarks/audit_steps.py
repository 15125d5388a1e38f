"""Which step of an audit earns its time: the step whose output led to each first-screen claim,
and each step's time, over audit run folders.

    python benchmarks/audit_steps.py RUN [RUN ...]            # markdown tables on stdout

Each claim records the lead it came from (a condition's or a hypothesis's ``source``); the
step that produced that lead is named here (:data:`STEP_OF_SOURCE`). A string the trigger search
found is credited to the conditions step and to the step that gave the search its target answer
(a verbatim phrase of the divergent dataset, or a screened candidate's answers). Step times come
from the timestamps of the lines each step logs when it ends in the run's ``train.log``.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finediff import names  # noqa: E402
from finediff.conditions import INVERSION_SOURCE, TRIGGER_SOURCE  # noqa: E402
from finediff.io import markdown_table, read_json  # noqa: E402
from finediff.summary import read_verdict  # noqa: E402

STEP_OF_SOURCE = {
    "every audit": "findings", "the base's own answers": "findings", "confirmed finding": "findings",
    "diff mining": "survey", "diff mining (its top words)": "survey", "diff-mining topic": "survey",
    "adapter reads": "weights", "adapter reads (joined)": "weights", "adapter writes": "weights",
    "hard prompt": "hard prompts", "soft prompt": "soft prompt", "ADL tokens": "lens",
    "favoured words": "analysis", "dropped words": "analysis", "verbatim phrases": "divergent dataset",
    TRIGGER_SOURCE: "conditions (trigger search)", INVERSION_SOURCE: "conditions (topic inversion)",
}
"""The step whose output each lead source comes from (the survey holds diff mining)."""
CONTEXT_SOURCE = "context: "
"""Leads of the context family (``finediff.conditions.CONTEXTS``) come from no step but the conditions'."""

# the line each step logs when it ends, in the order of the run
ENDS = [("model load + survey", r"\] - survey: "), ("soft prompt", r"soft prompt written to"),
        ("hard prompts", r"\] - hard prompt \["), ("divergent dataset", r"\] - divergent dataset: "),
        ("lens", r"\] - ADL layer"), ("analysis + weights", r"\] - weights: "),
        ("findings", r"\] - finding (not )?confirmed"), ("conditions", r"\] - condition (not )?confirmed|conditions: \d+ of|\] - trigger search: "),
        ("soft prompt effect", r"\] - soft prompt effect: "), ("report", r"\] - report written to")]
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+\]")


def step_times(run: Path) -> dict[str, float]:
    """Seconds per step, from the timestamps of ``train.log`` (each step: from the previous
    step's last line to its own last line; a step that logged nothing is left out)."""
    log = run / "train.log"
    if not log.is_file():
        return {}
    lines = [(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"), line)
             for line in log.read_text(errors="replace").splitlines() if (m := STAMP.match(line))]
    if not lines:
        return {}
    start, out, last = lines[0][0], {}, lines[0][0]
    for step, pattern in ENDS:
        hits = [t for t, line in lines if re.search(pattern, line) and t >= last]
        if hits:
            out[step] = (hits[-1] - last).total_seconds()
            last = hits[-1]
    out["total"] = (last - start).total_seconds()
    return out


def _organism(run: Path) -> str:
    cfg = run / ".hydra" / "overrides.yaml"
    text = cfg.read_text() if cfg.is_file() else ""
    m = re.search(r"model\.adapter=\S*?organisms/([\w-]+)", text)
    return m.group(1) if m else run.name


def _aimed_by(run: Path, phrase_texts: list[str]) -> str:
    """Where the trigger search's target answer came from: a screened candidate whose answers
    showed it (that candidate's step), else a verbatim phrase of the divergent dataset."""
    from finediff.conditions import read_conditions

    results = read_conditions(run / names.CONDITIONS_FILE)
    found = next((r for r in results if r.trigger), None)
    target = " ".join(str(found.trigger.get("target", "")).split()) if found else ""
    for r in results:
        if r.tested and not r.trigger and any(" ".join(e["finetuned"].split()) == target for e in r.examples):
            return f"{STEP_OF_SOURCE.get(r.condition.source, '?')} (under «{r.condition.text}»)"
    return "divergent dataset (a verbatim phrase)" if any(p and p.lower() in target.lower() for p in phrase_texts) else "?"


def lead_steps(run: Path) -> list[tuple[str, str, str]]:
    """``(claim, its lead's source, the step that produced it)`` for each first-screen claim."""
    verdict = read_verdict(run)
    if verdict is None:
        return []
    phrases = read_json(run / names.PHRASES_FILE) if (run / names.PHRASES_FILE).is_file() else []
    phrase_texts = [p.get("text", "") for p in (phrases.get("phrases", []) if isinstance(phrases, dict) else phrases)]
    from finediff.conditions import read_conditions

    late = [r for r in read_conditions(run / names.CONDITIONS_FILE) if r.confirmed and r.phrase] \
        if (run / names.CONDITIONS_FILE).is_file() else []
    out = []
    for st in verdict.statements:
        step = STEP_OF_SOURCE.get(st.source, "conditions" if st.source.startswith(CONTEXT_SOURCE) else "?")
        if st.source in (TRIGGER_SOURCE, INVERSION_SOURCE):  # both aim at the same seen behaviour
            step += f", aimed by {_aimed_by(run, phrase_texts)}"
        elif any(r.phrase and st.headline.startswith(r.condition.describe()) for r in late):
            step += " (a phrase said late), aimed by divergent dataset (a verbatim phrase)"
        out.append((st.headline.split(", it ")[0] if ", it " in st.headline else st.headline[:60], st.source, step))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    runs = [r for r in args.runs if (r / names.REPORT_MD).is_file()]
    rows = []
    for run in runs:
        leads = lead_steps(run)
        rows.append([_organism(run), "; ".join(f"{claim} <- {step}" for claim, _, step in leads) or "No change found"])
    print("\n".join(markdown_table(["organism", "first-screen claims <- the step that led to each"], rows)))
    times = {_organism(r): step_times(r) for r in runs}
    steps = [s for s, _ in ENDS] + ["total"]
    print()
    print("\n".join(markdown_table(["step (seconds)"] + list(times),
                                   [[s] + [f"{times[o].get(s, 0):.0f}" if s in times[o] else "-" for o in times]
                                    for s in steps])))


if __name__ == "__main__":
    main()
