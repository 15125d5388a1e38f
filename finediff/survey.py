"""The survey: where did the finetune change the model, before anyone says where to look?

An audit starts here. Every text of every shipped category, every prompt of the broad
everyday probe set (``data/probes/everyday.jsonl``: 20 domains, and the same kinds of
questions in French, Spanish and German, since a change may hide behind a language) and any texts the user
gives are answered greedily by the finetuned model; both models are teacher-forced on
that answer and the text is scored by the mean per-token KL(ft || base) over it. The
same pass feeds diff mining (:mod:`finediff.diff_mining`).

Each group (a category, a probe domain, a user file) is summarised with a 95% percentile
bootstrap interval of its mean (never below zero) and
tested against all other texts: a narrow finetune changes a few answers a lot, so the
test asks whether the group has more than its share of the survey's most divergent
texts (those above the :data:`TOP_QUANTILE` of all; one-sided Fisher exact test,
Holm-corrected over groups). A group *changed* when the corrected p-value is below
``alpha`` (``evidence.alpha``) and its mean is at least :data:`MIN_RATIO` times the median
text's divergence. A change is *broad* when even the median text diverges by
:data:`BROAD_MEDIAN` or more.

Before anything is scored, each group's texts are split by the seed into a *discovery*
half, which the soft prompt, the divergent dataset and diff mining may look at, and a
*fresh* half, kept for testing the findings (:mod:`finediff.findings`).
"""

from __future__ import annotations

import csv
import io
import math
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import List, Optional

import torch
from tqdm.auto import tqdm

from finediff import names
from finediff.corpus import GENERIC_CATEGORY
from finediff.data import REPO_ROOT, check_category, known_categories, load_category, stream_texts, take
from finediff.diff_mining import DiffMiner, DiffMining, mine_texts, write_mining
from finediff.divergence import token_divergence
from finediff.errors import FinediffError
from finediff.generation import GENERATE_BATCH, generate
from finediff.stats import holm, mean_interval
from finediff.io import atomic_path, read_json, read_jsonl, write_json, write_jsonl, write_text

PROBES = REPO_ROOT / names.PROBES_FILE

TOP_QUANTILE = 0.9
"""The test counts each group's texts above this quantile of all texts' divergence."""
MIN_RATIO = 2.0
"""A changed group's mean divergence is at least this many times the median text's."""
BROAD_MEDIAN = 0.1
"""A median text divergence (nats per token) at or above this is a broad change."""
MINING_TOP_K = 20
"""Diff mining: the top rising tokens counted per position ..."""
MINING_MIN_DIFF = 2.0
"""... that rose by at least this many logits ..."""
MINING_MIN_PROB = 1e-3
"""... and that the finetuned model gives at least this probability."""
MINING_GENERIC_TEXTS = 32
"""Generic-corpus texts mined too (read, not answered; 0: none)."""
MAX_NEW_TOKENS = 24
"""New tokens per greedy survey answer (the audit's budget: an audit of the embedded pair in about 15 CPU minutes)."""
SCORE_BATCH = 16
"""Answers teacher-forced at once (16 and 8 within noise: benchmarks/sampling.py)."""
N_TRAIN = 48
"""Highest-divergence discovery texts the soft prompt trains on (the next :data:`N_VAL` validate it)."""
N_VAL = 16
"""Discovery texts held out for the soft prompt's validation (every fourth of the top ``N_TRAIN + N_VAL``)."""


@dataclass
class SurveySettings:
    """What the survey scores and how it picks the texts the soft prompt trains on (the
    ``evidence.survey`` block: an audit's first step, when ``data.categories`` is null)
    -> survey.jsonl, survey_groups.csv, diff_mining.json."""

    probes: bool = True
    """Score the shipped everyday probe set (``data/probes/everyday.jsonl``), one group per domain."""
    texts: Optional[List[str]] = None
    """The user's own texts: category specs (a ``.jsonl`` path or ``hub:`` spec), one group each."""
    max_texts_per_group: int = 10
    """Half for discovery, half kept fresh for testing findings."""

    def __post_init__(self):
        if self.max_texts_per_group < 1:
            raise FinediffError(f"evidence.survey.max_texts_per_group must be >= 1, got {self.max_texts_per_group}")
        for c in self.texts or []:
            check_category(str(c))


@dataclass
class SurveyText:
    text: str
    group: str
    source: str
    """``category``, ``probe`` (a domain of the probe set) or ``user``."""
    discovery: bool
    """In the discovery half (False: kept fresh for testing findings)."""
    divergence: float = 0.0
    answer: str = ""
    """The finetuned model's greedy answer."""
    disagreement: float = 0.0
    """Share of the answer's tokens the base would not have chosen (its argmax differs):
    a finetune that only grew surer of the base's own answers scores 0 here, whatever its KL."""


@dataclass
class SurveyGroup:
    group: str
    source: str
    n: int
    mean_divergence: float
    ci_low: float
    ci_high: float
    max_divergence: float
    ratio: float
    """Mean divergence over the median text's."""
    top_share: float
    """Share of its texts above the survey's :data:`TOP_QUANTILE`."""
    p_value: float
    """Holm-corrected one-sided Fisher exact p-value of that share against every other text's."""
    changed: bool


@dataclass
class Survey:
    texts: list[SurveyText]
    groups: list[SurveyGroup]
    """Highest mean divergence first."""
    median_divergence: float
    mining: Optional[DiffMining] = None
    broad: bool = False
    """Even the median text diverges by :data:`BROAD_MEDIAN` or more."""

    @property
    def changed(self) -> list[SurveyGroup]:
        return [g for g in self.groups if g.changed]

    def ranked(self, discovery: Optional[bool] = True) -> list[SurveyText]:
        """Texts highest divergence first (``discovery``: only that half; None: all)."""
        pool = [t for t in self.texts if discovery is None or t.discovery == discovery]
        return sorted(pool, key=lambda t: -t.divergence)

    def training_texts(self, n_train: Optional[int] = None, n_val: Optional[int] = None) -> tuple[list[str], list[str]]:
        """The ``n_train + n_val`` highest-divergence discovery texts (None: :data:`N_TRAIN`,
        :data:`N_VAL`): every fourth to validation (``n_val`` of them at most)."""
        n_train = N_TRAIN if n_train is None else n_train
        n_val = N_VAL if n_val is None else n_val
        top = [t.text for t in self.ranked()][: n_train + n_val]
        val = top[3::4][:n_val]
        train = [t for t in top if t not in set(val)]
        if not val and len(train) > 1:
            val = [train.pop()]
        return train, val


def probe_texts(path: Path = PROBES) -> dict[str, list[str]]:
    """The probe set's texts by domain, in file order."""
    by_domain: dict[str, list[str]] = {}
    for _, row in read_jsonl(path):
        by_domain.setdefault(str(row[names.PROBE_DOMAIN_FIELD]), []).append(str(row[names.CATEGORY_TEXT_FIELD]))
    return by_domain


def group_texts(group: str, source: str) -> list[str]:
    """Every text of a survey group, surveyed or not: a category's or a user file's texts, or a
    probe domain's (empty for a group it cannot find)."""
    if source == "probe":
        return probe_texts().get(group, [])
    try:
        return list(dict.fromkeys(load_category(group, None, 0.0).train))
    except FinediffError:
        return []


def survey_items(settings: SurveySettings, categories: Optional[list[str]] = None, seed: int = 0) -> list[SurveyText]:
    """Every text to score, with its group and half (nothing scored yet): ``categories``
    (None: every shipped one), the probe set, the user's texts."""
    groups: list[tuple[str, str, list[str]]] = []
    for c in categories or known_categories():
        groups.append((str(c), "category", load_category(str(c), None, 0.0).train))
    if settings.probes:
        groups += [(d, "probe", t) for d, t in probe_texts().items()]
    for spec in settings.texts or []:
        groups.append((str(spec), "user", load_category(str(spec), None, 0.0).train))
    items = []
    for name, source, texts in groups:
        texts = list(dict.fromkeys(texts))
        random.Random(f"{seed}:{name}").shuffle(texts)
        texts = texts[: settings.max_texts_per_group]
        items += [SurveyText(t, name, source, i % 2 == 0) for i, t in enumerate(texts)]
    return items


def summarise_groups(texts: list[SurveyText], alpha: float = 0.01, min_ratio: float = MIN_RATIO,
                     top_quantile: float = TOP_QUANTILE, seed: int = 0) -> tuple[list[SurveyGroup], float]:
    """Per-group summaries and tests (see the module doc), highest mean first; and the
    median text's divergence."""
    from scipy.stats import fisher_exact

    values = sorted(t.divergence for t in texts)
    median = values[len(values) // 2] if values else 0.0
    cut = values[min(len(values) - 1, int(top_quantile * len(values)))] if values else 0.0
    top = [t.divergence > cut for t in texts]
    names_ = list(dict.fromkeys(t.group for t in texts))
    raw, rows = [], []
    for g in names_:
        mine = [t.divergence for t in texts if t.group == g]
        n = len(mine)
        mean, low, high, _ = mean_interval(mine, seed=seed)
        a = sum(hit for t, hit in zip(texts, top) if t.group == g)
        b = sum(hit for t, hit in zip(texts, top) if t.group != g)
        rest = len(texts) - n
        raw.append(float(fisher_exact([[a, n - a], [b, rest - b]], alternative="greater")[1]) if a else 1.0)
        source = next(t.source for t in texts if t.group == g)
        ratio = mean / median if median > 0 else (math.inf if mean > 0 else 1.0)
        rows.append([g, source, n, mean, low, high, max(mine), ratio, a / n])
    out = [SurveyGroup(*r, p, p < alpha and r[7] >= min_ratio) for r, p in zip(rows, holm(raw))]
    return sorted(out, key=lambda g: -g.mean_divergence), median


ANSWER_BATCH = GENERATE_BATCH
"""Survey texts per ``generate`` call."""


def survey_answers(pair, prompts: list[str], max_new_tokens: int, cache: Optional[Path] = None,
                   progress: bool = True, seed: int = 0) -> list[tuple[str, list[int]]]:
    """The finetuned model's greedy answers to ``prompts``, :data:`ANSWER_BATCH` at a time.
    With ``cache`` (a jsonl file) each batch is saved as soon as it is done, and the answers
    the file already holds for these prompts are read back instead of made again: a run
    stopped during the survey goes on from its last whole batch, in the same batches, so
    it ends with the answers of a run never stopped."""
    torch.manual_seed(seed)  # the random state the steps after the survey start from, answers read back or not
    done: list[tuple[str, list[int]]] = []
    if cache is not None and Path(cache).is_file():
        rows = [row for _, row in read_jsonl(cache)]
        if (len(rows) <= len(prompts) and all(r.get("prompt") == p for r, p in zip(rows, prompts))
                and all(r.get("max_new_tokens") == max_new_tokens for r in rows)):
            done = [(r["answer"], list(r["ids"])) for r in rows][: len(rows) - len(rows) % ANSWER_BATCH]
    starts = range(len(done), len(prompts), ANSWER_BATCH)
    for start in tqdm(starts, desc="survey answers", disable=not progress or len(starts) < 2):
        done += generate(pair.finetuned, pair.tokenizer, prompts[start:start + ANSWER_BATCH],
                         max_new_tokens=max_new_tokens, batch_size=ANSWER_BATCH, seed=None, return_ids=True,
                         progress=False)
        if cache is not None:
            write_jsonl(cache, [{"prompt": p, "answer": a, "ids": ids, "max_new_tokens": max_new_tokens}
                                for p, (a, ids) in zip(prompts, done)])
    return done


def run_survey(pair, settings: SurveySettings, categories: Optional[list[str]], alpha: float, seed: int = 0,
               progress: bool = True, answers: Optional[Path] = None) -> Survey:
    """Score every survey text (``categories``: None, every shipped one) over the finetuned
    model's greedy answer; mine the logit rises of the discovery half; a group changed at
    family-wise error rate ``alpha`` (Holm). ``answers``: the file that keeps the answers as they are made (:func:`survey_answers`)."""
    from finediff.divergent_dataset import teacher_forced

    items = survey_items(settings, categories, seed)
    if progress:
        print(f"survey: {len(items)} texts in {len({t.group for t in items})} groups", flush=True)
    prompts = [t.text for t in items]
    gens = survey_answers(pair, prompts, MAX_NEW_TOKENS, answers, progress, seed)
    miner = DiffMiner(pair.tokenizer, MINING_TOP_K, MINING_MIN_DIFF, MINING_MIN_PROB)
    scored = teacher_forced(pair, prompts, [ids for _, ids in gens], SCORE_BATCH, progress, "scoring answers")
    for item, (answer, ids), (lf, lb) in zip(items, gens, scored):
        div = token_divergence(lf, lb, "kl_ft_base")
        item.divergence = float(div.mean()) if div.numel() else 0.0
        item.disagreement = float((lb.argmax(-1).cpu() != torch.tensor(ids)).float().mean()) if ids else 0.0
        item.answer = answer
        if item.discovery:
            miner.add(lf, lb)
    groups, median = summarise_groups(items, alpha, MIN_RATIO, TOP_QUANTILE, seed)
    mining = miner.result()
    if MINING_GENERIC_TEXTS:
        generic = take(stream_texts(GENERIC_CATEGORY), MINING_GENERIC_TEXTS)
        g = mine_texts(DiffMiner(pair.tokenizer, MINING_TOP_K, MINING_MIN_DIFF, MINING_MIN_PROB), pair, generic,
                       batch_size=SCORE_BATCH, progress=progress).result(n_topics=0)
        mining.generic_words, mining.n_generic_texts = g.words, g.n_texts
    return Survey(items, groups, median, mining, median >= BROAD_MEDIAN)


def write_survey(survey: Survey, out: Path) -> None:
    """``survey.jsonl`` (every text), ``survey_groups.csv`` and its bar chart, and
    ``diff_mining.json`` / ``.png``."""
    out = Path(out)
    write_jsonl(out / names.SURVEY_TEXTS, [asdict(t) for t in survey.texts])

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[f.name for f in fields(SurveyGroup)])
    writer.writeheader()
    for g in survey.groups:
        writer.writerow(asdict(g))
    write_text(out / names.SURVEY_GROUPS, buf.getvalue())
    if survey.mining is not None:
        write_mining(survey.mining, out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = survey.groups[:25][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(groups) + 1.5))
    ax.barh([f"{g.group} ({g.source})" for g in groups], [g.mean_divergence for g in groups],
            xerr=[g.mean_divergence - g.ci_low for g in groups], capsize=2,
            color=["#c44e52" if g.changed else "#8c8c8c" for g in groups])
    ax.set_xlabel("mean per-token KL(ft || base) over the finetuned model's answers (red: changed)")
    ax.set_title("Where the finetune changed the answers")
    fig.tight_layout()
    with atomic_path(out / names.SURVEY_PNG) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    # written last: its presence marks a complete survey (see has_survey)
    write_json(out / names.SURVEY_SUMMARY, {"median_divergence": survey.median_divergence, "broad": survey.broad,
                                            "n_texts": len(survey.texts), "n_groups": len(survey.groups)})


def has_survey(out: Path) -> bool:
    """Whether a run folder holds a complete survey."""
    return (Path(out) / names.SURVEY_SUMMARY).is_file()


def read_survey(out: Path) -> Survey:
    """A survey back from its files (a malformed one is a one-line error naming it)."""
    out = Path(out)
    try:
        texts = [SurveyText(**row) for _, row in read_jsonl(out / names.SURVEY_TEXTS)]
        groups = []
        with open(out / names.SURVEY_GROUPS, newline="") as f:
            for row in csv.DictReader(f):
                groups.append(SurveyGroup(row["group"], row["source"], int(row["n"]),
                                          *(float(row[k]) for k in ("mean_divergence", "ci_low", "ci_high",
                                                                    "max_divergence", "ratio", "top_share",
                                                                    "p_value")),
                                          row["changed"] == "True"))
        summary = read_json(out / names.SURVEY_SUMMARY)
        median, broad = float(summary["median_divergence"]), bool(summary["broad"])
    except (KeyError, TypeError, ValueError) as err:
        raise FinediffError(f"{out}: malformed survey files ({type(err).__name__}: {err})") from None
    mining_file = out / names.DIFF_MINING_FILE
    mining = DiffMining.read(mining_file) if mining_file.is_file() else None
    return Survey(texts, groups, median, mining, broad)
