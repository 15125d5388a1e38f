"""The evidence steps, one plain function each: typed settings in, typed results out,
files written atomically into the run folder (:func:`survey` runs before training)."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Optional

import torch

from finediff import names
from finediff.analysis import BehavioralClusteringAnalyzer, DivergenceAnalyzer
from finediff.analysis.clustering import DEFAULT_EMBEDDER
from finediff.answers import answer_batch
from finediff.compare import compare_categories, write_comparison
from finediff.conditions import (LATE_MIN_PROMPTS, LATE_SHARE, MAX_NEW_TOKENS as CONDITION_TOKENS, SCREEN_PROMPTS,
                                 TRIGGER_SOURCE, ConditionResult, candidates, group_leads, search_conditions,
                                 trigger_targets, write_conditions)
from finediff.corpus import GENERIC_CATEGORY
from finediff.data import known_categories, load_category, stream_texts, take
from finediff.divergent_dataset import (GenerationConfig, dataset_prompts, generate_amplified, generate_dataset,
                                        rank_texts, save_dataset)
from finediff.findings import (TEMPERATURE as FINDINGS_TEMPERATURE, Finding, FindingSettings, evaluate_hypotheses,
                               phrase_hypothesis, propose, sample_answers, write_findings)
from finediff.generation import GENERATE_BATCH, generate
from finediff.hard_prompts import (BATCH_SIZE, EVAL_BATCHES, INIT_TEXTS, TRAIN_BATCHES, HardPrompt,
                                   find_hard_prompts)
from finediff.io import read_json, write_json, write_jsonl
from finediff.lens import STEER_CATEGORY, LensConfig, run_lens
from finediff.organisms.checkers import checker_for
from finediff.pipeline.settings import (AnalysisSettings, CompareSettings, DatasetSettings, HardPromptSettings, Objective,
                                        RunTexts)
from finediff.phrases import Phrase, mine_phrases, said_as, starts
from finediff.plots import lens_norms, lens_relevance
from finediff.records import CategoryResult, DivergentRecord, LensSummary, Organism
from finediff.report import write_report
from finediff.stats import alpha_share
from finediff.survey import Survey, SurveySettings, group_texts, run_survey, write_survey
from finediff.weights import WeightReading, read_weights

log = logging.getLogger(__name__)

DATASET_MAX_SCORED_TEXTS = 200
"""Run texts scored to find the divergent dataset's highest-divergence ones."""
DATASET_POSITIONS = "response"
"""How the divergent dataset's texts are ranked: over the finetuned model's greedy answer (``text``: the text)."""
DATASET_MAX_NEW_TOKENS = 32
"""New tokens of the greedy answer a text is ranked over."""
DATASET_BATCH_SIZE = GENERATE_BATCH
"""Prompts per ``generate`` call of the divergent dataset."""
AMPLIFIED_PER_PROMPT = 2
"""Amplified samples per prompt (``evidence.divergent_dataset.amplify_alpha`` > 0)."""
DATASET_TEXTS_PER_HARD_PROMPT = 3
"""Highest-divergence texts each hard prompt is put in front of."""
TRIGGER_SEED_TOKENS = 16
"""Tokens the adapter reads most that the trigger search tries at every step."""
FINDINGS_SAMPLES_PER_PROMPT = 4
"""Sampled answers per fresh prompt and model in the findings' tests."""
FINDINGS_MAX_NEW_TOKENS = 32
"""New tokens per sampled answer in the findings' tests: a refusal, a wrong fact or a voice shows
early (a third less sampling than 48)."""


def survey(pair, settings: SurveySettings, categories: Optional[list[str]], alpha: float, seed: int = 0,
           out: Optional[Path] = None, progress: bool = True, resume: bool = False) -> Survey:
    """Where the change is, before training: every category (``categories``; None: every
    shipped one), probe domain and user file
    scored over the finetuned model's answers, each group tested (family-wise error rate: the
    groups' share of the audit's ``alpha``), logit rises mined ->
    ``survey.jsonl``, ``survey_groups.csv`` / ``.png``, ``diff_mining.json`` / ``.png``.
    With ``out`` the answers are kept as they are made (``survey_answers.jsonl``, removed
    once the survey is written); with ``resume`` too, a survey stopped part-way goes on
    from the answers it kept."""
    cache = Path(out) / names.SURVEY_ANSWERS if out is not None else None
    if cache is not None and not resume:
        cache.unlink(missing_ok=True)
    result = run_survey(pair, settings, categories, alpha_share(alpha, "groups"), seed, progress, answers=cache)
    if out is not None:
        write_survey(result, Path(out))
        cache.unlink(missing_ok=True)
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
    train = texts.batches(tok, "train", TRAIN_BATCHES, BATCH_SIZE)
    if answers is not None:  # the search scores the answers the finetuned model gives with the soft prompt
        train = [answer_batch(pair, b, soft_prompt_PD.detach(), answers) for b in train]
    found = find_hard_prompts(
        pair, soft_prompt_PD, train, texts.batches(tok, "val", EVAL_BATCHES, BATCH_SIZE), s, objective.kind,
        objective.temperature, objective.chunk_size, objective.seed, answers=answers, start_PD=objective.start,
        init_texts=tuple(texts.train[:INIT_TEXTS]), progress=progress)
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
        texts = [t for _, t in rank_texts(pair, texts[:DATASET_MAX_SCORED_TEXTS], DATASET_POSITIONS,
                                          DATASET_MAX_NEW_TOKENS, max_length, progress=progress)]
    prompts = dataset_prompts(hard, texts, s.n_hard_prompts, DATASET_TEXTS_PER_HARD_PROMPT, s.n_texts)
    records = generate_dataset(pair, prompts, generation, seed=seed, batch_size=DATASET_BATCH_SIZE, progress=progress)
    if s.amplify_alpha > 0:
        records = sorted(records + generate_amplified(pair, prompts, generation, s.amplify_alpha,
                                                      AMPLIFIED_PER_PROMPT, seed, DATASET_BATCH_SIZE, progress),
                         key=lambda r: r.metrics.kl_divergence, reverse=True)
    if out is not None:
        save_dataset(records, out)
    return records


def phrases(records: list[DivergentRecord], out: Optional[Path] = None) -> list[Phrase]:
    """Verbatim phrases the finetuned generations of the divergent dataset repeat and the
    base's lack (:mod:`finediff.phrases`) -> ``phrases.json``."""
    found = mine_phrases((r.prompt, r.generation_1, r.generation_2) for r in records)
    if out is not None:
        write_json(Path(out) / names.PHRASES_FILE, {"phrases": [p.as_dict() for p in found]})
    for p in found:
        log.info("phrase: %r in %d finetuned answers to %d prompts (base %d)", p.text, p.n_finetuned, p.n_prompts,
                 p.n_base)
    return found


def organism_texts(organism: Optional[Organism]) -> tuple[list[str], list[dict]]:
    """``(finetuning texts of the target split, held-out off-target rows)`` of an organism."""
    if organism is None:
        return [], []
    texts = [f"{r['prompt']} {r['response']}" for r in organism.rows("train") if r["split"] == "target"]
    return texts, [r for r in organism.rows("heldout") if r["split"] == "off_target"]


def lens_texts(settings: LensConfig) -> list[str]:
    """The generic texts the ADL averages over."""
    return take(stream_texts(settings.generic or GENERIC_CATEGORY), settings.max_texts)


def lens(pair, settings: LensConfig, organism: Optional[Organism] = None, out: Optional[Path] = None,
         progress: bool = True) -> LensSummary:
    """The Activation Difference Lens on generic text -> ``lens/lens.json`` + plots.

    With an organism, relevance is scored against its finetuning data and the behaviour
    rate of steered vs unsteered samples on its held-out off-target prompts.
    """
    generic = settings.generic or GENERIC_CATEGORY
    generic_texts = lens_texts(settings)
    ft_texts, off_rows = organism_texts(organism)
    # Steer where the organism does not already show its behaviour: its held-out off-target
    # chat prompts, else its held-out off-target documents (continued as plain text), else
    # a general category's prompts.
    n = settings.n_steer_prompts
    chat_rows = [r for r in off_rows if r.get("chat", True)][:n]
    doc_rows = [r for r in off_rows if not r.get("chat", True)][:n]
    rows = chat_rows or doc_rows or [{"prompt": t} for t in load_category(STEER_CATEGORY, n, 0.0).train]
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
    write_json(folder / names.LENS_SUMMARY, summary.as_dict())
    return [lens_norms(summary, folder / names.LENS_NORM_PNG),
            lens_relevance(summary, folder / names.LENS_RELEVANCE_PNG)]


def compare(pair, settings: CompareSettings, categories: Optional[list[str]] = None, max_length: Optional[int] = None,
            out: Optional[Path] = None, title: str = "", progress: bool = True) -> list[CategoryResult]:
    """Mean divergence per category (``categories``; None: every shipped one) with a 95% CI,
    highest first -> ``comparison.csv`` / ``.md`` / ``.png``."""
    results = compare_categories(pair, list(categories or known_categories()),
                                 settings.max_texts_per_category, max_length, progress)
    if out is not None:
        write_comparison(results, Path(out), title)
    return results


def analysis(records: list[DivergentRecord], out: Path, settings: AnalysisSettings) -> None:
    """The divergence analysis and (with 3 records or more) the behaviour clusters of a
    divergent dataset -> ``divergence_analysis.json`` + plots, ``clusters.json``."""
    # per-category summaries: a record's prompt ends with the category text it was built from
    categories = {t: c for c in known_categories() for t in load_category(c, None, 0.0).train}
    DivergenceAnalyzer(output_dir=out).analyze_divergence_patterns(records, categories)
    if len(records) >= 3:
        BehavioralClusteringAnalyzer(settings.embedder or DEFAULT_EMBEDDER, output_dir=out) \
            .analyze_divergent_behaviors(records)


def weights(pair, out: Optional[Path] = None, progress: bool = True) -> WeightReading:
    """What the finetune's weight update writes and reads, no sampling -> ``weights.json``."""
    reading = read_weights(pair.base, pair.finetuned, pair.tokenizer, progress)
    if out is not None:
        reading.write(Path(out))
    return reading


def suggesting_prompts(survey_result: Survey, records: list[DivergentRecord] = ()) -> dict[str, list[str]]:
    """Per evidence source, the prompts whose answers it read: the survey's discovery half
    (diff mining, the soft prompt and the hard prompts trained on it) and the divergent
    dataset's prompts (its favoured and dropped words, verbatim phrases; the trigger search
    aims at those phrases). The weights, and checks every audit runs, read no prompt."""
    discovery = [t.text for t in survey_result.texts if t.discovery]
    dataset = list(dict.fromkeys(r.prompt for r in records))
    out = {s: discovery for s in ("diff mining", "diff mining (its top words)", "diff-mining topic", "soft prompt",
                                  "hard prompt")}
    out.update({s: dataset for s in ("favoured words", "dropped words", "verbatim phrases", TRIGGER_SOURCE)})
    return out


def _unused(texts: list[str], used: list[str]) -> list[str]:
    """``texts`` that are none of ``used`` and no part of one (a dataset prompt is a hard prompt
    in front of a survey text)."""
    used_set = set(used)
    joined = "\n".join(used)
    return [t for t in texts if t not in used_set and t not in joined]


def conditions(pair, survey_result: Survey, found: list[Finding], alpha: float,
               reading: Optional[WeightReading] = None, hard: list[HardPrompt] = (), out: Optional[Path] = None,
               seed: int = 0, progress: bool = True, phrases: list[Phrase] = (),
               records: list[DivergentRecord] = ()) -> list[ConditionResult]:
    """Search and test the conditions that turn a behaviour on, from every lead the earlier
    steps left (:mod:`finediff.conditions`), at the conditions' share of the audit's family-wise
    error rate ``alpha`` -> ``conditions.json``. The prompts they are screened
    and tested on are the survey's fresh prompts that no finding was tested on, and, for a
    survey group, that group's prompts the survey never scored. The context family
    (:data:`finediff.conditions.CONTEXTS`) is screened too."""
    mined = [w.word for w in survey_result.mining.words if w.count >= 2] if survey_result.mining else []
    soft = [w for h in hard if h.method in ("projection", "guided") for w in h.text.split()]
    searched = [h.text for h in hard if h.method != "text"]  # what the search wrote, not a survey text
    groups = group_leads(found)
    leads = candidates(reading.reads if reading else [], reading.words("writes") if reading else [], mined, soft,
                       groups, searched, context=True)
    suggested = suggesting_prompts(survey_result, records)
    findings_tested = list(dict.fromkeys(p for f in found for p in f.tested_on_prompts))
    used = findings_tested + suggested["diff mining"] + suggested["verbatim phrases"]
    fresh = _unused([t.text for t in survey_result.texts if not t.discovery], used)
    # a group's condition was suggested by the finding tested on its fresh prompts: it is screened
    # on the group's discovery prompts and tested on its prompts no step used (the unsurveyed ones
    # first), against other groups' unused fresh prompts in a seeded random order
    surveyed = {t.text for t in survey_result.texts}
    group_prompts: dict[str, tuple[list[str], list[str]]] = {}
    for g in groups:
        mine = [t for t in survey_result.texts if t.group == g]
        if not mine:
            continue
        unsurveyed = [x for x in group_texts(g, mine[0].source) if x not in surveyed]
        group_prompts[g] = ([t.text for t in mine if t.discovery],
                            _unused(unsurveyed + [t.text for t in mine if not t.discovery], used))
    others = [p for p in fresh if p not in {t.text for t in survey_result.texts if t.group in groups}]
    random.Random(seed).shuffle(others)
    group_prompts[""] = (others[:SCREEN_PROMPTS], others[SCREEN_PROMPTS:])
    suggested["confirmed finding"] = findings_tested
    # the trigger search also tries the tokens the adapter's early layers read; when no screened
    # candidate showed a behaviour it aims at a confirmed finding's: a verbatim phrase first,
    # else the answer that showed the strongest one (nothing confirmed: no search)
    from finediff.trigger import single_tokens

    targets = trigger_targets(found, [p.text for p in phrases])
    late = late_phrases(phrases, [r.generation_2 for r in records], found, pair.tokenizer)

    seed_tokens = single_tokens(pair.tokenizer, [t for t, _ in (reading.reads if reading else [])][:TRIGGER_SEED_TOKENS])
    pool = [p for p in fresh if p not in set(others[:SCREEN_PROMPTS])] if groups else fresh
    result = search_conditions(pair, leads, pool, group_prompts, seed, progress, alpha=alpha_share(alpha, "conditions"),
                               targets=targets, seed_tokens=seed_tokens, suggested=suggested, late_phrases=late)
    if out is not None:
        write_conditions(result, Path(out))
    return result


def late_phrases(phrases: list[Phrase], answers: list[str], found: list[Finding], tokenizer) -> list[str]:
    """The verbatim phrases a condition's answers may be too short to show, most prompts first (each
    as its example says it): said to at least :data:`~finediff.conditions.LATE_MIN_PROMPTS` prompts and
    never by the base, past the tokens a condition's answers read in at least
    :data:`~finediff.conditions.LATE_SHARE` of the finetuned ``answers`` that say it, and not already
    stated: no confirmed finding's detector fires on half or more of those answers."""
    out = []
    for p in sorted(phrases, key=lambda p: (-p.n_prompts, -p.n_finetuned)):
        if p.n_prompts < LATE_MIN_PROMPTS or p.n_base:
            continue
        saying = [a for a in answers if phrase_hypothesis(p.text).fires(a)]
        at = starts(p.text, saying, tokenizer)
        if not at:
            continue
        late = sum(t >= CONDITION_TOKENS for t in at) / len(at)
        stated = any(2 * sum(f.hypothesis.fires(a) for a in saying) >= len(saying) for f in found if f.confirmed)
        if late >= LATE_SHARE and not stated:
            out.append(said_as(p))
    return out


def findings(pair, survey_result: Survey, settings: FindingSettings, alpha: float, out: Optional[Path] = None,
             lens_summary: Optional[LensSummary] = None, seed: int = 0, progress: bool = True,
             reading: Optional[WeightReading] = None, phrases: list[Phrase] = (),
             records: list[DivergentRecord] = (), adl_texts: list[str] = ()) -> list[Finding]:
    """Candidate findings from the evidence, each tested on ``settings.n_prompts`` fresh prompts
    drawn at random (``seed``) from the survey's fresh half: the changed groups' first, then the
    others', at the findings' share of the audit's family-wise error rate ``alpha`` ->
    ``findings.json``. ``adl_texts``: the texts the ADL read, recorded as what suggested its words."""
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
    suggested = {**suggesting_prompts(survey_result, records), "ADL tokens": list(adl_texts)}
    # the changed groups' fresh prompts first, then every other fresh prompt, each part in a
    # seeded random order: the prompt is the test's unit, so a small changed group is topped up
    # with more prompts rather than more answers to the same ones
    changed = {g.group for g in survey_result.changed}
    every = [t for t in survey_result.texts if not t.discovery]
    keep = set(_unused([t.text for t in every], [p for ps in suggested.values() for p in ps]))
    rng = random.Random(seed)
    parts = [[t for t in every if t.text in keep and (t.group in changed) == first] for first in (True, False)]
    for part in parts:
        rng.shuffle(part)
    fresh = (parts[0] + parts[1])[:settings.n_prompts]
    if not fresh:
        log.info("findings: no fresh prompts to test on")
        return []
    texts = [t.text for t in fresh]
    per_prompt = FINDINGS_SAMPLES_PER_PROMPT
    reference = generate(pair.base, pair.tokenizer, texts, max_new_tokens=FINDINGS_MAX_NEW_TOKENS, progress=progress)
    written = reading.words("writes") if reading is not None else []
    hypotheses = propose(mined, favoured, dropped, lens_words, topics, dict(zip(texts, reference)), written,
                         [p.text for p in phrases])
    prompts, base, ft = sample_answers(pair, texts, per_prompt, FINDINGS_MAX_NEW_TOKENS, FINDINGS_TEMPERATURE, seed,
                                       progress)
    group_of = {t.text: t.group for t in fresh}
    result = evaluate_hypotheses(hypotheses, prompts, base, ft, [group_of[p] for p in prompts],
                                 alpha=alpha_share(alpha, "findings"), suggested=suggested)
    if out is not None:
        write_findings(result, Path(out), len(fresh))
    for f in result:
        log.info("finding %s: %s (finetuned %.0f%%, base %.0f%%; %s; p_adj %.3g)", "confirmed" if f.confirmed
                 else "not confirmed", f.hypothesis.claim, 100 * f.rate_finetuned, 100 * f.rate_base, f.sample(),
                 f.p_adjusted)
    return result


def report(out: Path, title: str = "", organism: Optional[Organism] = None) -> tuple[Path, Path]:
    """``report.md`` and ``report.html`` from every result file in the run folder."""
    return write_report(out, title, checker_for(organism.checker) if organism else None)
