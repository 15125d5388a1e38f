"""DivergenceAnalyzer: distributions, where the models part ways, favoured tokens."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Optional

from finediff import names
from finediff.io import write_json
from finediff.names import ANALYSIS_FILE, ANALYSIS_FIRST_PNG, ANALYSIS_KL_PNG
from finediff.plots import _plt, save
from finediff.records import DivergentRecord, as_records

_WORD = re.compile(r"[A-Za-z][A-Za-z']+")


def favoured_words(records: list[DivergentRecord], top: int = 20, min_count: int = 3) -> dict:
    """Words the finetuned generations use more than the base ones (and the reverse),
    by smoothed log-ratio of their frequencies."""
    ft, base = Counter(), Counter()
    for r in records:
        ft.update(w.lower() for w in _WORD.findall(r.generation_2))
        base.update(w.lower() for w in _WORD.findall(r.generation_1))
    n_ft, n_base = sum(ft.values()) + 1, sum(base.values()) + 1

    def ratio(w):
        return math.log((ft[w] + 1) / n_ft) - math.log((base[w] + 1) / n_base)

    words = sorted(w for w in set(ft) | set(base) if ft[w] + base[w] >= min_count)  # ties: alphabetical, every run
    favours = sorted(words, key=lambda w: -ratio(w))[:top]
    against = sorted(words, key=ratio)[:top]
    return {"finetuned_favours": [(w, round(ratio(w), 3), ft[w], base[w]) for w in favours],
            "base_favours": [(w, round(ratio(w), 3), ft[w], base[w]) for w in against]}


class DivergenceAnalyzer:
    """Summarise a divergent dataset (the seed's ``analyze_divergence_patterns``).

    Args:
        metrics: metric keys to summarise (default the seed's numeric ones).
        output_dir: where the JSON and the plots go (None: nothing written).
    """

    def __init__(self, metrics: Optional[list[str]] = None, output_dir: Optional[str | Path] = None):
        self.metrics = list(metrics or names.RECORD_METRICS)
        self.output_dir = Path(output_dir) if output_dir else None

    def analyze_divergence_patterns(self, dataset: list, categories: Optional[dict[str, str]] = None) -> dict:
        """Statistics per metric, first-divergence positions, favoured words, and per-category
        summaries when ``categories`` maps prompts (or their endings) to category names."""
        dataset = as_records(dataset)
        out: dict = {"n_records": len(dataset), "metrics": {}}
        for key in self.metrics:
            vals = sorted(r.metric(key) for r in dataset)
            if vals:
                out["metrics"][key] = {"mean": sum(vals) / len(vals), "median": vals[len(vals) // 2],
                                       "min": vals[0], "max": vals[-1]}
        firsts = [r.metrics.disagreement_positions.first_divergence for r in dataset]
        parted = [f for f in firsts if f >= 0]
        out["first_divergence"] = {"identical_pairs": firsts.count(-1), "mean_position": sum(parted) / len(parted)
                                   if parted else None, "at_first_token": parted.count(0),
                                   "histogram": dict(sorted(Counter(min(f, 20) for f in parted).items()))}
        out["words"] = favoured_words(dataset)
        if categories:
            per: dict[str, list[float]] = {}
            for r in dataset:
                cat = next((c for text, c in categories.items() if r.prompt.endswith(text)), "other")
                per.setdefault(cat, []).append(r.metrics.kl_divergence)
            out["per_category"] = {c: {"n": len(v), "mean_kl": sum(v) / len(v)} for c, v in per.items()}
        if self.output_dir:
            self._write(out, dataset, parted)
        return out

    def _write(self, out: dict, dataset: list[DivergentRecord], parted: list[int]) -> None:
        write_json(self.output_dir / ANALYSIS_FILE, out)
        plt = _plt()
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        axes[0].hist([r.metrics.kl_divergence for r in dataset], bins=30, color="#4c72b0")
        axes[0].set_xlabel("kl_divergence (nats/token)")
        axes[1].hist([r.metrics.token_disagreement_rate for r in dataset], bins=20, color="#dd8452")
        axes[1].set_xlabel(names.TOKEN_DISAGREEMENT)
        for ax in axes:
            ax.set_ylabel("records")
        fig.suptitle("Divergence distribution")
        fig.tight_layout()
        save(fig, self.output_dir / ANALYSIS_KL_PNG)
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.hist(parted, bins=range(0, max(parted + [1]) + 2), color="#55a868")
        ax.set_xlabel("first token where base and finetuned generations differ")
        ax.set_ylabel("records")
        fig.tight_layout()
        save(fig, self.output_dir / ANALYSIS_FIRST_PNG)
