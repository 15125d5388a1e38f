"""The whole evidence pipeline: :func:`run` calls the steps in :data:`STEPS` order,
hands each what it needs from the steps before it, reads a finished step back with
``resume``, and reports to a :class:`Sink` besides the run folder."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol

import torch

from finediff import names
from finediff.conditions import ConditionResult, read_conditions
from finediff.divergent_dataset import GenerationConfig
from finediff.findings import Finding, read_findings
from finediff.hard_prompts import HardPrompt, read_hard_prompts
from finediff.metrics import dataset_means
from finediff.phrases import Phrase
from finediff.pipeline.settings import MAX_PROMPT_PERPLEXITY, STEPS, EvidenceSettings, Objective, RunTexts
from finediff.pipeline.steps import (analysis, compare, conditions, divergent_dataset, findings, hard_prompts, lens,
                                     lens_texts,
                                     phrases, report, weights)
from finediff.prompt_effect import PromptEffect, prompt_effect, read_effect, write_effect
from finediff.records import CategoryResult, DivergentRecord, LensSummary, Organism, read_dataset
from finediff.survey import Survey, has_survey, read_survey
from finediff.weights import WeightReading

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where the steps report tables, metrics, images and files besides the run folder
    (the Lightning callback passes one over the trainer's loggers)."""

    def table(self, key: str, columns: list[str], rows: list[list]) -> None: ...
    def metrics(self, values: dict[str, float]) -> None: ...
    def images(self, key: str, paths: list[Path]) -> None: ...
    def files(self, key: str, paths: list[Path]) -> None: ...


class NullSink:
    """A sink that drops everything."""

    def table(self, key, columns, rows):
        pass

    def metrics(self, values):
        pass

    def images(self, key, paths):
        pass

    def files(self, key, paths):
        pass


@dataclass
class Evidence:
    """What :func:`run` produced (or read back)."""

    hard_prompts: list[HardPrompt] = field(default_factory=list)
    records: list[DivergentRecord] = field(default_factory=list)
    lens: Optional[LensSummary] = None
    comparison: list[CategoryResult] = field(default_factory=list)
    survey: Optional[Survey] = None
    findings: list[Finding] = field(default_factory=list)
    weights: Optional[WeightReading] = None
    conditions: list[ConditionResult] = field(default_factory=list)
    phrases: list[Phrase] = field(default_factory=list)
    prompt_effect: Optional[PromptEffect] = None
    report: Optional[tuple[Path, Path]] = None


TYPICAL_SECONDS = {"hard_prompts": 70, "divergent_dataset": 66, "lens": 39, "compare": 60, "analysis": 1,
                   "weights": 8, "findings": 30, "conditions": 166, "prompt_effect": 22, "report": 1}
"""Median seconds of each evidence step over the untold audits of SmolLM2 organisms on a 2-core CPU
(docs/results.md, "Which step leads to each claim"): the weights of the time estimate."""


class StepClock:
    """One log line as each step ends: its time, the time so far, and an estimate of what is
    left (the typical seconds of the steps to come, scaled by how this run compares so far)."""

    def __init__(self, steps: list[str]):
        self.steps, self.t0, self.current, self.started, self.done = list(steps), time.perf_counter(), None, 0.0, []

    def start(self, step: str) -> None:
        self.stop()
        self.current, self.started = step, time.perf_counter()

    def skip(self, step: str) -> None:
        """A step that does not run after all (its time is not to come)."""
        self.steps = [s for s in self.steps if s != step]

    def stop(self) -> None:
        if self.current is None:
            return
        now = time.perf_counter()
        self.done.append(self.current)
        spent, total = now - self.started, now - self.t0
        typical_done = sum(TYPICAL_SECONDS.get(s, 10) for s in self.done)
        left = sum(TYPICAL_SECONDS.get(s, 10) for s in self.steps if s not in self.done) * total / max(typical_done, 1)
        log.info("evidence step %s took %.0f s (evidence so far %.0f s; about %.0f s to go)", self.current, spent,
                 total, left)
        self.current = None


def _done(out: Path, step: str) -> bool:
    files = {"hard_prompts": names.HARD_PROMPTS_FILE, "divergent_dataset": names.DIVERGENT_DATASET_PT,
             "lens": f"{names.LENS_DIR}/{names.LENS_SUMMARY}", "compare": names.COMPARISON_CSV,
             "analysis": names.ANALYSIS_FILE, "findings": names.FINDINGS_FILE, "weights": names.WEIGHTS_FILE,
             "conditions": names.CONDITIONS_FILE, "prompt_effect": names.PROMPT_EFFECT_FILE}
    return step in files and (out / files[step]).is_file()


def run(pair, soft_prompt_PD: torch.Tensor, texts: RunTexts, settings: EvidenceSettings, objective: Objective,
        generation: GenerationConfig, out: Path, organism: Optional[Organism] = None, title: str = "",
        sink: Optional[Sink] = None, progress: bool = True) -> Evidence:
    """Every step in ``settings.steps``, in :data:`STEPS` order, into the run folder ``out``.

    Each step hands its results to the next in memory; with ``settings.resume`` a step
    whose output file exists is read back instead (the report is always rewritten).
    """
    out, sink, ev = Path(out), sink or NullSink(), Evidence()
    todo = [s for s in STEPS if s in settings.steps]
    if has_survey(out):
        ev.survey = read_survey(out)
    clock = StepClock([s for s in todo if ev.survey is not None or s not in ("findings", "conditions")])

    def cached(step: str) -> bool:
        hit = settings.resume and _done(out, step)
        if hit:
            log.info("evidence step %s: reading its output back from %s", step, out)
        return hit

    if "hard_prompts" in todo:
        clock.start("hard_prompts")
        if cached("hard_prompts"):
            ev.hard_prompts = read_hard_prompts(out / names.HARD_PROMPTS_FILE)
        else:
            ev.hard_prompts = hard_prompts(pair, soft_prompt_PD, texts, settings.hard_prompts, objective, out,
                                           progress)
        sink.table("hard_prompts", ["method", "text", "divergence", "perplexity"],
                   [[h.method, h.text, h.divergence, h.perplexity] for h in ev.hard_prompts])
    if "divergent_dataset" in todo:
        clock.start("divergent_dataset")
        if cached("divergent_dataset"):
            ev.records = read_dataset(out / names.DIVERGENT_DATASET_PT)
        else:
            hard = [h.text for h in ev.hard_prompts if h.perplexity <= MAX_PROMPT_PERPLEXITY]
            pool, ranked = texts.val + texts.train, False
            members = set(pool)
            if ev.survey is not None and members <= {t.text for t in ev.survey.texts}:
                # an audit's texts were scored by the survey already: its order, no second ranking
                pool, ranked = [t.text for t in ev.survey.ranked(None) if t.text in members], True
            ev.records = divergent_dataset(pair, pool, hard, settings.divergent_dataset, generation,
                                           objective.seed, out, texts.max_length, progress, ranked)

        ev.phrases = phrases(ev.records, out)
        means = dataset_means(ev.records)
        log.info("divergent dataset: %d records, %s", len(ev.records), means)
        sink.metrics(means)
        sink.table("divergent_dataset", ["prompt", "generation_1", "generation_2", *names.RECORD_METRICS],
                   [[r.prompt, r.generation_1, r.generation_2, *(r.metric(k) for k in names.RECORD_METRICS)]
                    for r in ev.records[:200]])
    if "lens" in todo:
        clock.start("lens")
        if cached("lens"):
            ev.lens = LensSummary.read(out / names.LENS_DIR / names.LENS_SUMMARY)
        else:
            ev.lens = lens(pair, settings.lens, organism, out, progress)
        sink.images("lens", [out / names.LENS_DIR / names.LENS_NORM_PNG,
                             out / names.LENS_DIR / names.LENS_RELEVANCE_PNG])
    if "compare" in todo and ev.survey is not None:
        clock.skip("compare")
        log.info("evidence step compare: skipped, the survey already compared every category")
    elif "compare" in todo:
        clock.start("compare")
        if cached("compare"):
            ev.comparison = CategoryResult.read_csv(out / names.COMPARISON_CSV)
        else:
            ev.comparison = compare(pair, settings.compare, settings.categories, texts.max_length, out, title,
                                    progress)
    if "analysis" in todo and ev.records and not cached("analysis"):
        clock.start("analysis")
        analysis(ev.records, out, settings.analysis)
    if "weights" in todo:
        clock.start("weights")
        if cached("weights"):
            ev.weights = WeightReading.read(out / names.WEIGHTS_FILE)
        else:
            ev.weights = weights(pair, out, progress)
    if "findings" in todo and ev.survey is not None:
        clock.start("findings")
        if cached("findings"):
            ev.findings = read_findings(out / names.FINDINGS_FILE)
        else:
            ev.findings = findings(pair, ev.survey, settings.findings, settings.alpha, out,
                                   ev.lens, objective.seed, progress, ev.weights, ev.phrases, ev.records,
                                   lens_texts(settings.lens) if ev.lens is not None else [])
    if "conditions" in todo and ev.survey is not None:
        clock.start("conditions")
        if cached("conditions"):
            ev.conditions = read_conditions(out / names.CONDITIONS_FILE)
        else:
            ev.conditions = conditions(pair, ev.survey, ev.findings, settings.alpha,
                                       ev.weights, ev.hard_prompts, out, objective.seed, progress, ev.phrases,
                                       ev.records)
    if "prompt_effect" in todo:
        clock.start("prompt_effect")
        if cached("prompt_effect"):
            ev.prompt_effect = read_effect(out / names.PROMPT_EFFECT_FILE)
        else:
            detectors = [(f.hypothesis.claim, f.hypothesis) for f in ev.findings if f.confirmed]
            detectors += [(c.behaviour(), c.hypothesis()) for c in ev.conditions if c.confirmed]
            ev.prompt_effect = prompt_effect(pair, soft_prompt_PD, texts.val or texts.train,
                                             detectors, ev.hard_prompts, progress)
            write_effect(ev.prompt_effect, out)
            log.info("soft prompt effect: %s", ev.prompt_effect.sentence())
    if "report" in todo:
        clock.start("report")
        ev.report = report(out, title, organism)
        log.info("report written to %s and %s", *ev.report)
        sink.images("report_plots", sorted(out.glob("*.png")))
        sink.files("report", list(ev.report))
    clock.stop()
    return ev
