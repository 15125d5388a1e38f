"""The evidence pipeline: what runs once the soft prompt is trained, in this order.

    hard_prompts ──> divergent_dataset ──> lens ──> compare ──> analysis ──> weights ──> findings ──> conditions ──> report
    (soft prompt,     (hard prompts,        (pair,    (pair,      (records)    (pair: the   (survey,      (findings,     (every file
     run texts)        run texts)            organism) categories)              update)      evidence)     leads)          of the run)

An audit (a run told no category) first runs :func:`survey` before the soft prompt is
trained: it scores every category and the broad probe set, mines the logit rises, and
picks the texts the soft prompt trains on. Its files in the run folder then stand in for
``compare`` (which is skipped) and feed ``findings``.

Every step is a plain function with typed settings in and typed results out, writing its
files atomically into the run folder (names from :mod:`finediff.names`). :func:`run`
calls them in :data:`STEPS` order and hands each what it needs from the steps before it,
in memory. With ``resume``, a step whose output is already in the run folder is read back
instead of recomputed, so an interrupted evidence phase picks up where it stopped. ``train.py``
(after fit) and the ``evaluate.py`` tasks call these same functions, one line each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional, Protocol

import torch

from finediff import names
from finediff.answers import AnswerSettings, answer_batch, check_positions
from finediff.data import collate, format_parts, known_categories, load_category, stream_texts, take
from finediff.divergent_dataset import (POSITIONS, GenerationConfig, dataset_prompts, generate_dataset, rank_texts,
                                        save_dataset)
from finediff.errors import FinediffError
from finediff.conditions import (ConditionResult, ConditionSettings, candidates, group_leads, read_conditions,
                                 search_conditions, write_conditions)
from finediff.findings import Finding, FindingSettings, read_findings, topic_hypothesis
from finediff.hard_prompts import METHODS, HardPrompt, find_hard_prompts, read_hard_prompts
from finediff.io import write_json, write_jsonl
from finediff.lens import LensConfig, run_lens
from finediff.records import CategoryResult, DivergentRecord, LensSummary, Organism, read_dataset
from finediff.prompt_effect import PromptEffect, PromptEffectSettings, prompt_effect, read_effect, write_effect
from finediff.survey import Survey, SurveySettings, has_survey, read_survey
from finediff.weights import WeightReading, WeightSettings, read_weights

log = logging.getLogger(__name__)

STEPS = ("hard_prompts", "divergent_dataset", "lens", "compare", "analysis", "weights", "findings", "conditions",
         "prompt_effect", "report")
"""The evidence steps in the order :func:`run` calls them."""


# --------------------------------------------------------------------------- settings


def from_mapping(cls, mapping: Any, where: str):
    """A settings dataclass from a config mapping; an unknown key or a value of the wrong
    type is a one-line error naming ``where.key``."""
    mapping = dict(mapping or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(mapping) - set(known))
    if unknown:
        raise FinediffError(f"unknown setting {where}.{unknown[0]}; known: {', '.join(sorted(known))}")
    for key, value in mapping.items():
        default = known[key].default
        kind = type(default) if default is not None and type(default) in (int, float, bool, str) else None
        ok = (kind is None or value is None and default is None or isinstance(value, kind)
              or kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok or (kind in (int, float) and isinstance(value, bool)):
            raise FinediffError(f"{where}.{key} must be {kind.__name__}, got {value!r}")
    return cls(**mapping)


def _positive(where: str, **values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise FinediffError(f"{where}.{key} must be >= 1, got {value}")


def _positions(where: str, positions: str) -> None:
    if positions not in POSITIONS:
        raise FinediffError(f"{where}.positions must be {' or '.join(POSITIONS)}, got {positions!r}")


@dataclass
class HardPromptSettings:
    """Hard prompts from the soft prompt (see :func:`finediff.hard_prompts.find_hard_prompts`)."""

    methods: tuple = METHODS
    fluency_weight: float = 0.02
    """Weight of the base model's log-perplexity of the prompt in the objective."""
    pez_steps: int = 20
    gcg_steps: int = 4
    top_k: int = 32
    n_candidates: int = 12
    """Single swaps scored exactly per GCG step."""
    fluent_top: int = 128
    """GCG swaps only to the base model's top tokens at each position (0: any)."""
    train_batches: int = 4
    eval_batches: int = 4
    batch_size: int = 4
    init_texts: int = 64
    """Training texts ranked by their divergence alone (method ``text``)."""
    n_starts: int = 12
    """The highest of them tried as natural-language starts."""
    init_tokens: int = 16
    gcg_start: str = "derived"
    """``derived``: GCG refines the best of the projection, guided and PEZ prompts (a prompt
    derived from the soft prompt); ``any``: the best start, natural-language text starts included."""
    gcg_on_policy: bool = False
    """On the answer objective, GCG scores each prompt over the answers given with it in
    place (as the held-out evaluation does), not over the soft prompt's answers."""
    max_perplexity: Optional[float] = None
    """GCG's perplexity budget: prompts the base model reads at a higher perplexity rank
    below every prompt within it (None: no budget)."""
    budget_steps: int = 0
    """With ``max_perplexity``: GCG searches without the budget, then walks its result into
    it for this many more steps (0: the budget applies to the whole search)."""
    budget_fluent_top: int = 0
    """> 0: the walk swaps only to the base model's this many likeliest tokens at each
    position; 0: to any allowed token the gradient ranks high (measured: keeps the effect)."""
    budget_bridging: int = 0
    """> 0: each walk step also scores this many swaps chosen for how they read (at the
    token the base model finds least likely and the one before it: :func:`bridging_tokens`)."""
    budget_n_candidates: Optional[int] = None
    """The gradient's swaps scored each walk step (None: ``n_candidates``, as in the search)."""
    gcg_own_answers: bool = False
    """On-policy GCG scores every candidate swap over the answers given with it in place
    (one more answer per candidate and text each step), not over the current prompt's."""
    positions: Optional[str] = None
    """Where the search and the measurement read the divergence: None, the soft prompt's
    own objective; ``response``, over the finetuned model's answers (also from a soft prompt
    trained at the text positions); ``text``, at the text positions."""

    def __post_init__(self):
        self.methods = tuple(self.methods)
        if self.positions is not None:
            check_positions(self.positions, "evidence.hard_prompts.positions")
        if self.gcg_start not in ("derived", "any"):
            raise FinediffError(f"evidence.hard_prompts.gcg_start must be derived or any; got {self.gcg_start!r}")
        if self.max_perplexity is not None and (isinstance(self.max_perplexity, bool) or not isinstance(
                self.max_perplexity, (int, float)) or self.max_perplexity <= 1):
            raise FinediffError(f"evidence.hard_prompts.max_perplexity must be a number > 1 or null; "
                                f"got {self.max_perplexity!r}")
        unknown = set(self.methods) - set(METHODS)
        if unknown or not self.methods:
            raise FinediffError(f"evidence.hard_prompts.methods: unknown {sorted(unknown) or 'empty list'}; "
                                f"choose from {', '.join(METHODS)}")
        if self.budget_steps < 0 or self.budget_fluent_top < 0 or self.budget_bridging < 0:
            raise FinediffError(f"evidence.hard_prompts.budget_steps, budget_fluent_top and budget_bridging must be "
                                f">= 0; got {self.budget_steps}, {self.budget_fluent_top} and {self.budget_bridging}")
        if self.budget_n_candidates is not None:
            _positive("evidence.hard_prompts", budget_n_candidates=self.budget_n_candidates)
        _positive("evidence.hard_prompts", top_k=self.top_k, n_candidates=self.n_candidates,
                  train_batches=self.train_batches, eval_batches=self.eval_batches, batch_size=self.batch_size)


@dataclass
class DatasetSettings:
    """Which prompts the divergent dataset samples (the sampling itself: ``generation``)."""

    n_hard_prompts: int = 2
    """Best distinct hard prompts used."""
    texts_per_hard_prompt: int = 3
    """Highest-divergence texts each hard prompt is put in front of."""
    n_texts: int = 5
    """Highest-divergence texts used alone."""
    max_scored_texts: int = 200
    """Run texts scored to find the highest-divergence ones."""
    batch_size: int = 16
    positions: str = "response"
    """How texts are ranked: over the finetuned model's greedy answer, or the text itself."""
    max_new_tokens: int = 32
    max_prompt_perplexity: float = 1000.0
    """Hard prompts the base model finds less readable than this are left out."""
    amplify_alpha: float = 0.0
    """Also sample the finetuned side from amplified logits (0: no amplified records)."""
    amplified_per_prompt: int = 2

    def __post_init__(self):
        _positions("evidence.divergent_dataset", self.positions)
        _positive("evidence.divergent_dataset", batch_size=self.batch_size, max_scored_texts=self.max_scored_texts,
                  max_new_tokens=self.max_new_tokens, amplified_per_prompt=self.amplified_per_prompt)
        if self.amplify_alpha < 0:
            raise FinediffError(f"evidence.divergent_dataset.amplify_alpha must be >= 0, got {self.amplify_alpha}")


@dataclass
class CompareSettings:
    """The category comparison (see :func:`finediff.compare.compare_categories`)."""

    categories: Optional[list] = None
    """Categories to compare (None: every shipped one)."""
    max_texts_per_category: int = 24
    batch_size: int = 8
    positions: str = "response"
    max_new_tokens: int = 32

    def __post_init__(self):
        _positions("evidence.compare", self.positions)
        _positive("evidence.compare", max_texts_per_category=self.max_texts_per_category,
                  batch_size=self.batch_size, max_new_tokens=self.max_new_tokens)
        if self.categories is not None:
            from finediff.data import category_file

            self.categories = [str(c) for c in self.categories]
            for c in self.categories:
                if not c.startswith("hub:"):
                    category_file(c)


@dataclass
class AnalysisSettings:
    """The divergence analysis and behaviour clusters of the divergent dataset."""

    embedder: Optional[str] = None
    """Sentence-transformers model for the clusters (None: the packaged all-MiniLM-L6-v2)."""


@dataclass
class EvidenceSettings:
    """Every step's settings (the ``evidence`` config group) and which steps run."""

    steps: tuple = STEPS
    resume: bool = False
    """Read back a step's output when the run folder already has it."""
    hard_prompts: HardPromptSettings = field(default_factory=HardPromptSettings)
    divergent_dataset: DatasetSettings = field(default_factory=DatasetSettings)
    lens: LensConfig = field(default_factory=LensConfig)
    compare: CompareSettings = field(default_factory=CompareSettings)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    survey: SurveySettings = field(default_factory=SurveySettings)
    findings: FindingSettings = field(default_factory=FindingSettings)
    weights: WeightSettings = field(default_factory=WeightSettings)
    conditions: ConditionSettings = field(default_factory=ConditionSettings)
    prompt_effect: PromptEffectSettings = field(default_factory=PromptEffectSettings)

    @classmethod
    def from_mapping(cls, mapping: Any) -> "EvidenceSettings":
        d = dict(mapping or {})
        parts = {"hard_prompts": HardPromptSettings, "divergent_dataset": DatasetSettings, "lens": LensConfig,
                 "compare": CompareSettings, "analysis": AnalysisSettings, "survey": SurveySettings,
                 "findings": FindingSettings, "weights": WeightSettings, "conditions": ConditionSettings,
                 "prompt_effect": PromptEffectSettings}
        built = {k: from_mapping(kind, d.pop(k, None), f"evidence.{k}") for k, kind in parts.items()}
        out = from_mapping(cls, d, "evidence")
        for k, v in built.items():
            setattr(out, k, v)
        out.steps = tuple(out.steps)
        unknown = [s for s in out.steps if s not in STEPS]
        if unknown:
            raise FinediffError(f"unknown evidence step {unknown[0]!r}; choose from {', '.join(STEPS)}")
        return out


@dataclass
class Objective:
    """The soft prompt's objective, which the hard prompts optimise too."""

    kind: str = "kl_ft_base"
    temperature: float = 1.0
    chunk_size: int = 256
    seed: int = 0
    positions: str = "text"
    """``response``: over the finetuned model's answers (:mod:`finediff.answers`); ``text``: the text's own."""
    answers: AnswerSettings = field(default_factory=AnswerSettings)
    start: Optional[torch.Tensor] = None
    """``[P, D]``: the soft prompt before training (the ``guided`` hard prompts follow what
    training added to it); None: unknown."""

    @classmethod
    def from_record(cls, record: dict, seed: int = 0) -> "Objective":
        """The objective a ``soft_prompt.pt`` record was trained with (records written
        before the answer objective existed trained at the text positions)."""
        # Records written before the rename to max_new_tokens hold the same number as "answer_tokens".
        tokens = record.get("max_new_tokens", record.get("answer_tokens", AnswerSettings.tokens))
        return cls(str(record["divergence"]), float(record["temperature"]), seed=seed,
                   positions=str(record.get("positions", "text")),
                   answers=AnswerSettings(tokens=int(tokens),
                                          faithful=bool(record.get("faithful", False))),
                   start=record.get("start"))

    @property
    def answer_settings(self) -> Optional[AnswerSettings]:
        """The answers' settings when the objective reads answers, else None."""
        return self.answers if self.positions == "response" else None


@dataclass
class RunTexts:
    """The texts a run trained and validated its soft prompt on."""

    train: list[str]
    val: list[str]
    max_length: Optional[int] = 64
    """Tokens per text after the chat template (longer texts keep their end)."""
    chat_template: bool = True

    def batches(self, tokenizer, split: str, n: int, batch_size: int) -> list[dict]:
        """Up to ``n`` padded batches of the ``train`` or ``val`` texts, in order."""
        texts = (self.train if split == "train" else self.val)[: n * batch_size]
        items = [format_parts(tokenizer, t, self.chat_template) for t in texts]
        return [collate(items[i:i + batch_size], tokenizer.pad_token_id, self.max_length)
                for i in range(0, len(items), batch_size)]


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
    prompt_effect: Optional[PromptEffect] = None
    report: Optional[tuple[Path, Path]] = None


# --------------------------------------------------------------------------- the steps


def survey(pair, settings: SurveySettings, seed: int = 0, out: Optional[Path] = None,
           progress: bool = True) -> Survey:
    """Where the change is, before training: every category, probe domain and user file
    scored over the finetuned model's answers, each group tested, logit rises mined ->
    ``survey.jsonl``, ``survey_groups.csv`` / ``.png``, ``diff_mining.json`` / ``.png``."""
    from finediff.survey import run_survey, write_survey

    result = run_survey(pair, settings, seed, progress)
    if out is not None:
        write_survey(result, Path(out))
    changed = ", ".join(f"{g.group} ({g.mean_divergence:.3f})" for g in result.changed) or "none"
    log.info("survey: %d texts, median divergence %.4f; changed groups: %s", len(result.texts),
             result.median_divergence, changed)
    return result


def hard_prompts(pair, soft_prompt_PD: torch.Tensor, texts: RunTexts, settings: HardPromptSettings,
                 objective: Objective, out: Optional[Path] = None, progress: bool = True) -> list[HardPrompt]:
    """Hard prompts from the learned soft prompt, measured on the held-out texts, best
    first -> ``hard_prompts.jsonl``. On the answer objective the search scores the
    finetuned model's answers given with the soft prompt, and each prompt found is
    measured on the answers the finetuned model gives with that prompt in place."""
    s = settings
    tok = pair.tokenizer
    answers = objective.answer_settings if s.positions is None else \
        objective.answers if s.positions == "response" else None
    raw = train = texts.batches(tok, "train", s.train_batches, s.batch_size)
    if answers is not None:  # the search scores the answers the finetuned model gives with the soft prompt
        train = [answer_batch(pair, b, soft_prompt_PD.detach(), answers) for b in raw]
    found = find_hard_prompts(
        pair, soft_prompt_PD, train, texts.batches(tok, "val", s.eval_batches, s.batch_size), answers=answers,
        methods=s.methods, kind=objective.kind,
        temperature=objective.temperature, fluency_weight=s.fluency_weight, pez_steps=s.pez_steps,
        gcg_steps=s.gcg_steps, top_k=s.top_k, n_candidates=s.n_candidates, chunk_size=objective.chunk_size,
        seed=objective.seed, progress=progress, init_texts=tuple(texts.train[: s.init_texts]),
        start_PD=objective.start,
        init_tokens=s.init_tokens, n_starts=s.n_starts, fluent_top=s.fluent_top, gcg_start=s.gcg_start,
        on_policy=raw if s.gcg_on_policy else None, max_perplexity=s.max_perplexity, own_answers=s.gcg_own_answers,
        budget_steps=s.budget_steps, budget_fluent_top=s.budget_fluent_top, budget_bridging=s.budget_bridging,
        budget_n_candidates=s.budget_n_candidates)
    if out is not None:
        write_jsonl(Path(out) / names.HARD_PROMPTS_FILE, [h.as_dict() for h in found])
    for h in found:
        log.info("hard prompt [%s] %r: divergence %.4f (no prompt %.4f), perplexity %.1f",
                 h.method, h.text, h.divergence, h.divergence_no_prompt, h.perplexity)
    return found


def divergent_dataset(pair, texts: list[str], hard: list[str], settings: DatasetSettings,
                      generation: GenerationConfig, seed: int = 0, out: Optional[Path] = None,
                      max_length: Optional[int] = None, progress: bool = True,
                      ranked: bool = False) -> list[DivergentRecord]:
    """Rank ``texts`` by the pair's divergence (``ranked``: they already are, highest
    first), put the best ``hard`` prompts in front of the highest, sample both models and
    score every pair -> ``divergent_dataset.pt`` / ``.jsonl``, highest ``kl_divergence`` first."""
    s = settings
    if not ranked:
        texts = [t for _, t in rank_texts(pair, texts[: s.max_scored_texts], s.positions, s.max_new_tokens,
                                          max_length, progress=progress)]
    prompts = dataset_prompts(hard, texts, s.n_hard_prompts, s.texts_per_hard_prompt, s.n_texts)
    records = generate_dataset(pair, prompts, generation, seed=seed, batch_size=s.batch_size, progress=progress)
    if s.amplify_alpha > 0:
        from finediff.divergent_dataset import generate_amplified

        records = sorted(records + generate_amplified(pair, prompts, generation, s.amplify_alpha,
                                                      s.amplified_per_prompt, seed, s.batch_size, progress),
                         key=lambda r: r.metrics.kl_divergence, reverse=True)
    if out is not None:
        save_dataset(records, out)
    return records


def organism_texts(organism: Optional[Organism]) -> tuple[list[str], list[dict]]:
    """``(finetuning texts of the target split, held-out off-target rows)`` of an organism."""
    if organism is None:
        return [], []
    texts = [f"{r['prompt']} {r['response']}" for r in organism.rows("train") if r["split"] == "target"]
    return texts, [r for r in organism.rows("heldout") if r["split"] == "off_target"]


def lens(pair, settings: LensConfig, organism: Optional[Organism] = None, out: Optional[Path] = None,
         progress: bool = True) -> LensSummary:
    """The Activation Difference Lens on generic text -> ``lens/lens.json`` + plots.

    With an organism, relevance is scored against its finetuning data and the behaviour
    rate of steered vs unsteered samples on its held-out off-target prompts.
    """
    from finediff.corpus import GENERIC_CATEGORY
    from finediff.organisms.checkers import checker_for

    generic = settings.generic or GENERIC_CATEGORY
    generic_texts = take(stream_texts(generic), settings.max_texts)
    ft_texts, off_rows = organism_texts(organism)
    # Steer where the organism does not already show its behaviour: its held-out off-target
    # chat prompts, else its held-out off-target documents (continued as plain text), else
    # a general category's prompts.
    n = settings.n_steer_prompts
    chat_rows = [r for r in off_rows if r.get("chat", True)][:n]
    doc_rows = [r for r in off_rows if not r.get("chat", True)][:n]
    rows = chat_rows or doc_rows or [{"prompt": t} for t in load_category(settings.steer_category, n, 0.0).train]
    summary = run_lens(pair, generic_texts, [r["prompt"] for r in rows], settings, ft_texts or None, progress,
                       steer_chat=[r.get("chat", True) for r in rows])
    summary.generic = generic
    if organism is not None:
        checker = checker_for(organism.checker)
        summary.organism = organism.name
        for entry in summary.layers.values():
            st = entry.steering
            st.unsteered_behaviour_rate = sum(checker(g, r) for g, r in zip(st.unsteered, rows)) / len(rows)
            st.steered_behaviour_rate = sum(checker(g, r) for g, r in zip(st.steered, rows)) / len(rows)
    if out is not None:
        write_lens(summary, Path(out) / names.LENS_DIR)
    for layer, entry in summary.layers.items():
        log.info("ADL layer %s relevance %s steering strength %s", layer, entry.relevance_max_over_positions,
                 entry.steering.chosen_strength if entry.steering else None)
    return summary


def write_lens(summary: LensSummary, folder: Path) -> list[Path]:
    from finediff.plots import lens_norms, lens_relevance

    write_json(folder / names.LENS_SUMMARY, summary.as_dict())
    return [lens_norms(summary, folder / names.LENS_NORM_PNG),
            lens_relevance(summary, folder / names.LENS_RELEVANCE_PNG)]


def compare(pair, settings: CompareSettings, max_length: Optional[int] = None, out: Optional[Path] = None,
            title: str = "", progress: bool = True) -> list[CategoryResult]:
    """Mean divergence per category with a 95% CI, highest first -> ``comparison.csv`` /
    ``.md`` / ``.png``."""
    from finediff.compare import compare_categories, write_comparison

    s = settings
    results = compare_categories(pair, list(s.categories or known_categories()), s.max_texts_per_category,
                                 s.batch_size, max_length, progress, s.positions, s.max_new_tokens)
    if out is not None:
        where = "over the finetuned model's answers" if s.positions == "response" else "over the texts"
        write_comparison(results, Path(out), title, f"mean per-token KL(ft || base) {where}")
    return results


def analysis(records: list[DivergentRecord], out: Path, settings: AnalysisSettings) -> None:
    """The divergence analysis and (with 3 records or more) the behaviour clusters of a
    divergent dataset -> ``divergence_analysis.json`` + plots, ``clusters.json``."""
    from finediff.analysis import BehavioralClusteringAnalyzer, DivergenceAnalyzer
    from finediff.analysis.clustering import DEFAULT_EMBEDDER

    # per-category summaries: a record's prompt ends with the category text it was built from
    categories = {t: c for c in known_categories() for t in load_category(c, None, 0.0).train}
    DivergenceAnalyzer(output_dir=out).analyze_divergence_patterns(records, categories)
    if len(records) >= 3:
        BehavioralClusteringAnalyzer(settings.embedder or DEFAULT_EMBEDDER, output_dir=out) \
            .analyze_divergent_behaviors(records)


def weights(pair, settings: WeightSettings, out: Optional[Path] = None, progress: bool = True) -> WeightReading:
    """What the finetune's weight update writes and reads, no sampling -> ``weights.json``."""
    reading = read_weights(pair.base, pair.finetuned, pair.tokenizer, settings, progress)
    if out is not None:
        reading.write(Path(out))
    return reading


def conditions(pair, survey_result: Survey, found: list[Finding], settings: ConditionSettings,
               reading: Optional[WeightReading] = None, hard: list[HardPrompt] = (), out: Optional[Path] = None,
               seed: int = 0, progress: bool = True) -> list[ConditionResult]:
    """Search and test the conditions that turn a behaviour on, from every lead the earlier
    steps left (:mod:`finediff.conditions`) -> ``conditions.json``."""
    mined = [w.word for w in survey_result.mining.words if w.count >= 2] if survey_result.mining else []
    soft = [w for h in hard if h.method in ("projection", "guided") for w in h.text.split()]
    searched = [h.text for h in hard if h.method != "text"]  # what the search wrote, not a survey text
    groups = group_leads(found)
    leads = candidates(reading.reads if reading else [], reading.words("writes") if reading else [], mined, soft,
                       groups, settings, searched)
    fresh = survey_result.ranked(False)
    everyday = [t.text for t in reversed(fresh)]  # least divergent first: prompts that carry no condition
    group_prompts = {g: [t.text for t in fresh if t.group == g] for g in groups}
    in_groups = {p for ps in group_prompts.values() for p in ps}
    group_prompts[""] = [p for p in everyday if p not in in_groups]
    result = search_conditions(pair, leads, everyday, settings, group_prompts, seed, progress)
    if out is not None:
        write_conditions(result, Path(out))
    return result


def findings(pair, survey_result: Survey, settings: FindingSettings, out: Optional[Path] = None,
             lens_summary: Optional[LensSummary] = None, seed: int = 0, progress: bool = True,
             reading: Optional[WeightReading] = None) -> list[Finding]:
    """Candidate findings from the evidence, each tested on the survey's fresh prompts
    where the change is -> ``findings.json``."""
    from finediff.findings import evaluate_hypotheses, propose, sample_answers, write_findings
    from finediff.generation import generate
    from finediff.io import read_json

    # a word mined once may be a stray piece; topics keep every word (a set claim tolerates strays)
    mined = [w.word for w in survey_result.mining.words if w.count >= 2] if survey_result.mining else []
    favoured, dropped = [], []
    if out is not None and (Path(out) / names.ANALYSIS_FILE).is_file():
        words = read_json(Path(out) / names.ANALYSIS_FILE)["words"]
        favoured = [w for w, *_ in words["finetuned_favours"]]
        dropped = [w for w, *_ in words["base_favours"]]
    lens_words = []
    if lens_summary is not None:
        for entry in lens_summary.layers.values():
            for pos in entry.positions:
                lens_words += [t.strip() for t, _ in pos.patchscope["tokens"][:5]]
    topics = survey_result.mining.topics if survey_result.mining else []
    # where a group changed, its fresh prompts, each sampled more often (the same number of answers in all)
    changed = [g.group for g in survey_result.changed]
    fresh = (changed and survey_result.fresh_prompts(settings.n_prompts, changed)) or \
        survey_result.fresh_prompts(settings.n_prompts)
    if not fresh:
        log.info("findings: no fresh prompts to test on")
        return []
    texts = [t.text for t in fresh]
    per_prompt = max(settings.samples_per_prompt, -(-settings.n_prompts * settings.samples_per_prompt // len(texts)))
    reference = generate(pair.base, pair.tokenizer, texts, max_new_tokens=settings.max_new_tokens, progress=progress)
    written = reading.words("writes") if reading is not None else []
    hypotheses = propose(mined, favoured, dropped, lens_words, topics, settings, dict(zip(texts, reference)), written)
    prompts, base, ft = sample_answers(pair, texts, replace(settings, samples_per_prompt=per_prompt), seed, progress)
    group_of = {t.text: t.group for t in fresh}
    result = evaluate_hypotheses(hypotheses, prompts, base, ft, [group_of[p] for p in prompts], settings)
    if out is not None:
        write_findings(result, Path(out), len(fresh))
    for f in result:
        log.info("finding %s: %s (finetuned %.0f%%, base %.0f%%, p_adj %.3g)", "confirmed" if f.confirmed
                 else "not confirmed", f.hypothesis.claim, 100 * f.rate_finetuned, 100 * f.rate_base, f.p_adjusted)
    return result


def report(out: Path, title: str = "", organism: Optional[Organism] = None) -> tuple[Path, Path]:
    """``report.md`` and ``report.html`` from every result file in the run folder."""
    from finediff.organisms.checkers import checker_for
    from finediff.report import write_report

    return write_report(out, title, checker_for(organism.checker) if organism else None)


# --------------------------------------------------------------------------- the whole pipeline


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

    def cached(step: str) -> bool:
        hit = settings.resume and _done(out, step)
        if hit:
            log.info("evidence step %s: reading its output back from %s", step, out)
        return hit

    if "hard_prompts" in todo:
        if cached("hard_prompts"):
            ev.hard_prompts = read_hard_prompts(out / names.HARD_PROMPTS_FILE)
        else:
            ev.hard_prompts = hard_prompts(pair, soft_prompt_PD, texts, settings.hard_prompts, objective, out,
                                           progress)
        sink.table("hard_prompts", ["method", "text", "divergence", "perplexity"],
                   [[h.method, h.text, h.divergence, h.perplexity] for h in ev.hard_prompts])
    if "divergent_dataset" in todo:
        if cached("divergent_dataset"):
            ev.records = read_dataset(out / names.DIVERGENT_DATASET_PT)
        else:
            hard = [h.text for h in ev.hard_prompts if h.perplexity <= settings.divergent_dataset.max_prompt_perplexity]
            pool, ranked = texts.val + texts.train, False
            members = set(pool)
            if ev.survey is not None and members <= {t.text for t in ev.survey.texts}:
                # an audit's texts were scored by the survey already: its order, no second ranking
                pool, ranked = [t.text for t in ev.survey.ranked(None) if t.text in members], True
            ev.records = divergent_dataset(pair, pool, hard, settings.divergent_dataset, generation,
                                           objective.seed, out, texts.max_length, progress, ranked)
        from finediff.metrics import dataset_means

        means = dataset_means(ev.records)
        log.info("divergent dataset: %d records, %s", len(ev.records), means)
        sink.metrics(means)
        sink.table("divergent_dataset", ["prompt", "generation_1", "generation_2", *names.RECORD_METRICS],
                   [[r.prompt, r.generation_1, r.generation_2, *(r.metric(k) for k in names.RECORD_METRICS)]
                    for r in ev.records[:200]])
    if "lens" in todo:
        if cached("lens"):
            ev.lens = LensSummary.read(out / names.LENS_DIR / names.LENS_SUMMARY)
        else:
            ev.lens = lens(pair, settings.lens, organism, out, progress)
        sink.images("lens", [out / names.LENS_DIR / names.LENS_NORM_PNG,
                             out / names.LENS_DIR / names.LENS_RELEVANCE_PNG])
    if "compare" in todo and ev.survey is not None:
        log.info("evidence step compare: skipped, the survey already compared every category")
    elif "compare" in todo:
        if cached("compare"):
            ev.comparison = CategoryResult.read_csv(out / names.COMPARISON_CSV)
        else:
            ev.comparison = compare(pair, settings.compare, texts.max_length, out, title, progress)
    if "analysis" in todo and ev.records and not cached("analysis"):
        analysis(ev.records, out, settings.analysis)
    if "weights" in todo:
        if cached("weights"):
            ev.weights = WeightReading.read(out / names.WEIGHTS_FILE)
        else:
            ev.weights = weights(pair, settings.weights, out, progress)
    if "findings" in todo and ev.survey is not None:
        if cached("findings"):
            ev.findings = read_findings(out / names.FINDINGS_FILE)
        else:
            ev.findings = findings(pair, ev.survey, settings.findings, out, ev.lens, objective.seed, progress,
                                   ev.weights)
    if "conditions" in todo and ev.survey is not None:
        if cached("conditions"):
            ev.conditions = read_conditions(out / names.CONDITIONS_FILE)
        else:
            ev.conditions = conditions(pair, ev.survey, ev.findings, settings.conditions, ev.weights,
                                       ev.hard_prompts, out, objective.seed, progress)
    if "prompt_effect" in todo:
        if cached("prompt_effect"):
            ev.prompt_effect = read_effect(out / names.PROMPT_EFFECT_FILE)
        else:
            detectors = [(f.hypothesis.claim, f.hypothesis) for f in ev.findings if f.confirmed]
            detectors += [(c.behaviour(), topic_hypothesis(c.words)) for c in ev.conditions if c.confirmed]
            ev.prompt_effect = prompt_effect(pair, soft_prompt_PD, texts.val or texts.train, settings.prompt_effect,
                                             detectors, ev.hard_prompts, progress)
            write_effect(ev.prompt_effect, out)
            log.info("soft prompt effect: %s", ev.prompt_effect.sentence())
    if "report" in todo:
        ev.report = report(out, title, organism)
        log.info("report written to %s and %s", *ev.report)
        sink.images("report_plots", sorted(out.glob("*.png")))
        sink.files("report", list(ev.report))
    return ev
