"""Typed records: every record or summary that more than one module reads.

Producers build these dataclasses and consumers read their fields; ``as_dict()`` and
``from_dict()`` are the file edge (JSON, JSONL, ``torch.save`` with
``weights_only=True``), where the seed's plain-dict formats are kept exactly.
``from_dict`` turns a malformed entry into a one-line :class:`FinediffError` naming
what is missing, so a hand-edited or truncated file never surfaces as a ``KeyError``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from finediff import names
from finediff.errors import FinediffError
from finediff.io import load_torch, read_jsonl


def _need(d: Any, keys: tuple[str, ...], what: str) -> dict:
    if not isinstance(d, dict):
        raise FinediffError(f"{what}: expected an object, got {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise FinediffError(f"{what}: missing {', '.join(missing)}")
    return d


# --------------------------------------------------------------------------- divergent dataset


@dataclass
class DisagreementPositions:
    """Where two generations part ways."""

    first_divergence: int
    """First index where the generated token sequences differ; their common length if
    one is a prefix of the other; -1 if identical."""
    num_disagreements: int
    """Response positions where the two models' argmax next tokens differ."""
    response_length: int
    """Tokens of ``generation_2``."""


@dataclass
class RecordMetrics:
    """The seed's ``metrics`` block of one record (definitions in :mod:`finediff.metrics`)."""

    kl_divergence: float
    """Mean per-token KL(ft || base) over the response positions (nats per token)."""
    token_disagreement_rate: float
    """Share of response positions where the two models' argmax next tokens differ."""
    vocab_jaccard_similarity: float
    """|A ∩ B| / |A ∪ B| of the two generations' token-id sets."""
    disagreement_positions: DisagreementPositions


@dataclass
class DivergentRecord:
    """One prompt with both models' generations side by side, scored (the seed's format)."""

    prompt: str
    """The user message both models answered."""
    generation_1: str
    """The base model's generation."""
    generation_2: str
    """The finetuned model's generation."""
    metrics: RecordMetrics
    amplification: Optional[float] = None
    """``alpha`` when ``generation_2`` was sampled from the amplified logits
    (:mod:`finediff.amplification`); None for a plain sample (the key is then left out)."""

    def as_dict(self) -> dict:
        d = asdict(self)
        if self.amplification is None:
            d.pop("amplification")
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "divergent record") -> "DivergentRecord":
        _need(d, ("prompt", "generation_1", "generation_2", "metrics"), where)
        m = _need(d["metrics"], names.RECORD_METRICS + ("disagreement_positions",), f"{where}: metrics")
        p = _need(m["disagreement_positions"], ("first_divergence", "num_disagreements", "response_length"),
                  f"{where}: disagreement_positions")
        return cls(str(d["prompt"]), str(d["generation_1"]), str(d["generation_2"]), RecordMetrics(
            float(m[names.KL_DIVERGENCE]), float(m[names.TOKEN_DISAGREEMENT]), float(m[names.VOCAB_JACCARD]),
            DisagreementPositions(int(p["first_divergence"]), int(p["num_disagreements"]),
                                  int(p["response_length"]))),
                   None if d.get("amplification") is None else float(d["amplification"]))

    def metric(self, key: str) -> float:
        """One of :data:`finediff.names.RECORD_METRICS` by name."""
        return float(getattr(self.metrics, key))


def as_records(dataset: list) -> list[DivergentRecord]:
    """Records from a list of :class:`DivergentRecord` or of the seed's plain dicts."""
    return [r if isinstance(r, DivergentRecord) else DivergentRecord.from_dict(r, f"record {i}")
            for i, r in enumerate(dataset)]


def read_dataset(path: str | Path) -> list[DivergentRecord]:
    """A divergent dataset from its ``.pt`` or ``.jsonl`` file; a damaged file is a
    one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FinediffError(f"divergent dataset not found: {path}")
    if path.suffix == ".pt":
        rows = load_torch(path, "a divergent dataset")
        if not isinstance(rows, list):
            raise FinediffError(f"{path}: not a divergent dataset (a list of records), got {type(rows).__name__}")
        return [DivergentRecord.from_dict(r, f"{path}: record {i}") for i, r in enumerate(rows)]

    return [DivergentRecord.from_dict(r, f"{path}:{n}") for n, r in read_jsonl(path)]


# --------------------------------------------------------------------------- category comparison


@dataclass
class CategoryResult:
    """How much one category changed: the pair's per-text divergence, summarised."""

    category: str
    n: int
    """Texts scored."""
    mean_divergence: float
    ci_low: float
    """Lower end of the 95% confidence interval of the mean (normal approximation)."""
    ci_high: float
    std: float
    max_divergence: float

    @classmethod
    def read_csv(cls, path: str | Path) -> list["CategoryResult"]:
        """The rows of a ``comparison.csv``, in file order (highest first)."""
        out = []
        with open(path, newline="") as f:
            for i, row in enumerate(csv.DictReader(f), 2):
                _need(row, tuple(x.name for x in fields(cls)), f"{path}:{i}")
                out.append(cls(row["category"], int(row["n"]), *(float(row[k]) for k in
                               ("mean_divergence", "ci_low", "ci_high", "std", "max_divergence"))))
        return out


# --------------------------------------------------------------------------- ADL


@dataclass
class Steering:
    """The steering search at one layer (see :func:`finediff.lens.search_steering`)."""

    chosen_strength: float
    """Largest strength whose samples stayed coherent (0: none did)."""
    threshold_perplexity: float
    unsteered_perplexity: float
    perplexity_by_strength: dict
    min_distinct_share: float
    distinct_share_by_strength: dict
    prompts: list
    steered: list
    """The finetuned model's samples at the chosen strength."""
    unsteered: list
    steered_behaviour_rate: Optional[float] = None
    """Share of steered samples the organism's checker marks (organism runs only)."""
    unsteered_behaviour_rate: Optional[float] = None


@dataclass
class LensPosition:
    """The difference at one position, read through the logit lens and Patchscope."""

    position: int
    diff_norm: float
    logit_lens_pos: list
    """``[token, probability]`` of the difference (+) through the finetuned model's head."""
    logit_lens_neg: list
    base_mean_lens: list
    """Control: the base model's mean activation through the same head."""
    ft_mean_lens: list
    patchscope: dict
    """``scales``, ``novelty``, ``chosen_scale`` and the chosen scale's ``tokens``."""
    relevance: Optional[dict] = None
    """Share of relevant tokens per reading (organism runs only)."""


@dataclass
class LensLayer:
    """ADL at one layer."""

    relative_depth: float
    n_texts: int
    base_norm: float
    ft_norm: float
    """Finetuned model's mean activation norm at the layer (steering is scaled by it)."""
    positions: list[LensPosition]
    relevance_max_over_positions: dict
    steering: Optional[Steering]
    steering_vector: list[float]


@dataclass
class LensSummary:
    """What ``lens/lens.json`` holds: ADL on every configured layer."""

    relevant_tokens: list[str]
    layers: dict[str, LensLayer] = field(default_factory=dict)
    """Keyed by the 0-based layer index as a string (JSON keys)."""
    generic: str = ""
    """The generic corpus the means were taken over."""
    organism: Optional[str] = None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "lens summary") -> "LensSummary":
        _need(d, ("relevant_tokens", "layers"), where)
        layers = {}
        for key, e in d["layers"].items():
            _need(e, ("relative_depth", "n_texts", "base_norm", "ft_norm", "positions"), f"{where}: layer {key}")
            st = e.get("steering")
            layers[key] = LensLayer(
                e["relative_depth"], e["n_texts"], e["base_norm"], e["ft_norm"],
                [LensPosition(**p) for p in e["positions"]], e.get("relevance_max_over_positions") or {},
                Steering(**st) if st else None, e.get("steering_vector") or [])
        return cls(list(d["relevant_tokens"]), layers, d.get("generic", ""), d.get("organism"))

    @classmethod
    def read(cls, path: str | Path) -> "LensSummary":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()), str(path))
        except (OSError, json.JSONDecodeError) as err:
            raise FinediffError(f"cannot read lens summary {path}: {err}") from None


# --------------------------------------------------------------------------- organisms


@dataclass(frozen=True)
class OrganismCard:
    """What an organism is (``card.json`` in its adapter folder), for people and for the
    tools that score finediff. The recipe fills the first fields; the builder adds the rest."""

    name: str
    description_short: str
    description_long: str
    target_category: str
    checker: str
    """Name of its behaviour checker in :data:`finediff.organisms.checkers.CHECKERS`."""
    steps: int = 160
    """LoRA training steps of the shipped build (the builder's default for this organism)."""
    off_target_loss: str = "kl"
    """How off-target examples (the base's own answers) are trained: ``kl`` distils the
    base's whole next-token distribution (the finetune stays as unsure as the base
    there), ``ce`` trains its greedy answer only (which sharpens the finetune everywhere)."""
    max_new_tokens: int = 0
    """New tokens its behaviour needs to show: verification generates at least this many, and the
    builder keeps held-out prompts by the base's answers this long (0: their defaults)."""
    base: Optional[str] = None
    seed: Optional[int] = None
    rank: Optional[int] = None
    learning_rate: Optional[float] = None
    train_examples: Optional[int] = None
    build_seconds: Optional[float] = None
    data: Optional[str] = None
    """The finetuning data file, relative to the repository when inside it."""
    recipe: Optional[str] = None
    """The recipe that generated its data (:data:`finediff.organisms.recipes.RECIPES`)."""
    recipe_options: Optional[dict] = None
    """Options the recipe was called with (empty: its defaults)."""

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def read(cls, folder: str | Path) -> "OrganismCard":
        path = Path(folder) / names.CARD_FILE
        if not path.is_file():
            raise FinediffError(f"no {names.CARD_FILE} in organism folder {folder}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise FinediffError(f"{path}: malformed JSON ({err.msg})") from None
        known = {f.name for f in fields(cls)}
        _need(d, tuple(f.name for f in fields(cls) if f.default is not None and f.name in
                       ("name", "description_short", "description_long", "target_category", "checker")), str(path))
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Organism:
    """An organism as a run sees it (the ``organism`` config group): where its adapter
    and data are, its target category and its checker."""

    name: str
    adapter: str
    data: str
    """Folder with its ``train.jsonl`` (finetuning data) and ``heldout.jsonl``."""
    target_category: str
    checker: str

    @classmethod
    def from_config(cls, cfg: Any) -> Optional["Organism"]:
        if not cfg:
            return None
        d = dict(cfg)
        _need(d, tuple(f.name for f in fields(cls)), "organism config")
        return cls(**{f.name: str(d[f.name]) for f in fields(cls)})

    def rows(self, which: str) -> list[dict]:
        """Rows of its ``train`` or ``heldout`` file."""
        file = {"train": names.ORGANISM_TRAIN_FILE, "heldout": names.ORGANISM_HELDOUT_FILE}[which]
        path = Path(self.data) / file
        if not path.is_file():
            raise FinediffError(f"organism {self.name!r}: {path} is missing")
        return [r for _, r in read_jsonl(path)]
