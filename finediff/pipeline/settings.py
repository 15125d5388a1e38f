"""The evidence pipeline's settings: the ``evidence`` config group, one dataclass per
step (:class:`EvidenceSettings` holds them all and which steps run); the ``module`` config
group, the soft prompt's training (:class:`SoftPromptSettings`); the :class:`Objective` a
trained prompt keeps and the :class:`RunTexts` it trained on.

The settings dataclasses are the one schema of their config group: their defaults are the
only defaults (``configs/evidence/default.yaml`` holds overrides only), the shells register
them as Hydra structured configs (``config_schema.py``), so OmegaConf checks each key and
type when the config is composed, and each ``__post_init__`` checks the values' ranges (a
one-line :class:`FinediffError` naming the key). Their field types are those OmegaConf
supports: lists, not tuples (``__post_init__`` turns them into tuples where code wants one)."""

from __future__ import annotations

import logging

from dataclasses import dataclass, field, fields
from typing import List, Optional

import torch

from finediff.answers import AnswerSettings, check_positions
from finediff.data import check_category, collate, format_parts
from finediff.divergence import parse_kind
from finediff.errors import FinediffError, check_number
from finediff.findings import FindingSettings
from finediff.generation import GENERATE_BATCH
from finediff.hard_prompts import HardPromptSettings
from finediff.lens import LensConfig
from finediff.soft_prompt import PromptInit, PromptSpace
from finediff.survey import SurveySettings

STEPS = ("hard_prompts", "divergent_dataset", "lens", "compare", "analysis", "weights", "findings", "conditions",
         "prompt_effect", "report")
"""The evidence steps in the order :func:`finediff.pipeline.run` calls them."""
FAITHFUL_BASE_ANCHOR = 1.0
"""The faithful objective subtracts this times the base shift, KL(base without prompt || base with it):
it holds the base where it was (docs/results.md#soft-prompt-objectives); alone it measured below the bar."""
WARMUP_STEPS = 5
"""The soft prompt's learning rate warms up linearly over this many steps."""
MAX_PROMPT_PERPLEXITY = 1000.0
"""Hard prompts the base model finds less readable than this are left out of the divergent dataset."""


def _positive(where: str, **values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise FinediffError(f"{where}.{key} must be >= 1, got {value}")


@dataclass
class DatasetSettings:
    """Which prompts the divergent dataset samples (the sampling itself: ``generation``)."""

    n_hard_prompts: int = 2
    """Best distinct hard prompts used (each in front of the highest-divergence texts,
    :data:`finediff.pipeline.steps.DATASET_TEXTS_PER_HARD_PROMPT` of them)."""
    n_texts: int = 5
    """Highest-divergence texts used alone."""
    amplify_alpha: float = 0.0
    """> 0: also sample the finetuned side from the amplified logits
    ``logits_ft + alpha * (logits_ft - logits_base)`` (0: no amplified records)."""

    def __post_init__(self):
        if self.amplify_alpha < 0:
            raise FinediffError(f"evidence.divergent_dataset.amplify_alpha must be >= 0, got {self.amplify_alpha}")


@dataclass
class CompareSettings:
    """The category comparison: mean divergence per category -> comparison.csv / .md / .png
    (see :func:`finediff.compare.compare_categories`)."""

    max_texts_per_category: int = 24
    """The run's quick view (``task=compare`` scores 100 per category)."""

    def __post_init__(self):
        _positive("evidence.compare", max_texts_per_category=self.max_texts_per_category)


@dataclass
class AnalysisSettings:
    """The divergence analysis and behaviour clusters of the divergent dataset."""

    embedder: Optional[str] = None
    """Sentence-transformers model for the clusters (None: the packaged all-MiniLM-L6-v2)."""


@dataclass
class EvidenceSettings:
    """Every step's settings (the ``evidence`` config group) and which steps run."""

    steps: List[str] = field(default_factory=lambda: list(STEPS))
    """The steps that run, of :data:`STEPS` (always in that order; ``[]``: none)."""
    resume: bool = False
    """Read back a step's output when the run folder already has it."""
    alpha: float = 0.05
    """Family-wise error rate of the whole audit: every claim it can state, from the survey's groups,
    the findings and the conditions, is tested within one budget, split between the three steps
    in the fixed shares of :data:`finediff.stats.ALPHA_SHARES` and Holm-corrected within each."""
    categories: Optional[List[str]] = None
    """Categories scored, by the survey in an audit or by the category comparison in a told run
    (each a shipped name, a ``.jsonl`` path or a ``hub:`` spec; None: every shipped one)."""
    hard_prompts: HardPromptSettings = field(default_factory=HardPromptSettings)
    divergent_dataset: DatasetSettings = field(default_factory=DatasetSettings)
    lens: LensConfig = field(default_factory=LensConfig)
    compare: CompareSettings = field(default_factory=CompareSettings)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    survey: SurveySettings = field(default_factory=SurveySettings)
    findings: FindingSettings = field(default_factory=FindingSettings)

    def __post_init__(self):
        self.steps = tuple(self.steps)
        unknown = [s for s in self.steps if s not in STEPS]
        if unknown:
            raise FinediffError(f"unknown evidence step {unknown[0]!r}; choose from {', '.join(STEPS)}")
        if not 0 < self.alpha < 1:
            raise FinediffError(f"evidence.alpha must be in (0, 1), got {self.alpha}")
        if self.categories is not None:
            self.categories = [str(c) for c in self.categories]
            for c in self.categories:
                check_category(c)


@dataclass
class SoftPromptSettings:
    """How the soft prompt is trained: the ``module`` config group (``module.*``), the one
    home of its defaults; :class:`lightning_modules.SoftPromptDivergence` takes these fields."""

    num_soft_prompt_tokens: int = 8
    """8 x 576 = 4,608 trainable parameters on SmolLM2."""
    init: str = "vocab"
    """``vocab``: random token embeddings; ``text``: ``init_text``'s; ``random``: norm-matched noise; ``mean``."""
    init_text: Optional[str] = None
    divergence: str = "kl_ft_base"
    """``kl_ft_base`` | ``kl_base_ft`` | ``symmetric_kl`` | ``jsd``."""
    temperature: float = 1.0
    chunk_size: Optional[int] = 256
    """Positions per divergence chunk (bounds the vocabulary-sized memory)."""
    learning_rate: float = 1e-2
    gradient_checkpointing: bool = False
    positions: str = "text"
    """``text``: the divergence at the text positions (brought the behaviour out on 5 of 8 organisms, faithful on 3,
    docs/results.md#soft-prompt-objectives); ``response``: over the answers."""
    max_new_tokens: int = 16
    """New tokens per answer (``positions=response``); a narrow change shows early."""
    space: str = "vectors"
    """``vectors``: free vectors; ``tokens``: a distribution over the allowed tokens per position."""
    faithful: bool = False
    """Read both models' answers, special tokens out, empty or repetitive answers unscored, and the base's
    shift subtracted (:data:`FAITHFUL_BASE_ANCHOR`)."""

    def __post_init__(self) -> None:
        check_number("module.num_soft_prompt_tokens", self.num_soft_prompt_tokens, int, minimum=1)
        parse_kind(self.divergence)
        if self.init not in [i.value for i in PromptInit]:
            raise FinediffError(f"module.init must be one of {', '.join(i.value for i in PromptInit)}; "
                                f"got {self.init!r}")
        for key in ("learning_rate", "temperature"):
            check_number(f"module.{key}", getattr(self, key), float)
            if getattr(self, key) <= 0:
                raise FinediffError(f"module.{key} must be > 0, got {getattr(self, key)!r}")
        if self.chunk_size is not None:
            check_number("module.chunk_size", self.chunk_size, int, minimum=0)
        check_positions(self.positions)
        check_number("module.max_new_tokens", self.max_new_tokens, int, minimum=1)
        if self.space not in [s.value for s in PromptSpace]:
            raise FinediffError(f"module.space must be one of {', '.join(s.value for s in PromptSpace)}; "
                                f"got {self.space!r}")
        for key in ("faithful", "gradient_checkpointing"):
            if not isinstance(getattr(self, key), bool):
                raise FinediffError(f"module.{key} must be true or false, got {getattr(self, key)!r}")
        self.answers  # noqa: B018  (AnswerSettings checks its own values)

    @classmethod
    def of(cls, values: dict) -> "SoftPromptSettings":
        """The settings from ``module.*`` values (a plain mapping or a composed group; the
        Hydra ``_target_`` is not a setting), checked; an unknown key is one line naming it."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in dict(values).items() if k != "_target_"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise FinediffError(f"module.{unknown[0]} is not a setting; known: {', '.join(sorted(known))}")
        return cls(**values)

    @property
    def answers(self) -> AnswerSettings:
        """The on-policy answers' settings."""
        return AnswerSettings(self.max_new_tokens, batch_size=GENERATE_BATCH, faithful=self.faithful)

    @property
    def base_anchor(self) -> float:
        """Weight of the base shift subtracted from the objective (the faithful objective's)."""
        return FAITHFUL_BASE_ANCHOR if self.faithful else 0.0


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


def run_seed(seed: Optional[int]) -> int:
    """The one seed every random draw of a run starts from: the run's ``seed``, or, for
    ``seed=null``, one drawn from the operating system's entropy (logged and kept with the run's
    metrics, so an unseeded run can still be repeated). Seeds Python, NumPy and torch
    (``transformers.set_seed``); ``train.py`` also hands it to Lightning for its workers."""
    from transformers import set_seed

    if seed is None:
        import numpy as np

        seed = int(np.random.SeedSequence().entropy % (2 ** 31))
        logging.getLogger(__name__).info("seed=null: this run draws seed %d", seed)
    set_seed(int(seed))
    return int(seed)
