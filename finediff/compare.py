"""Model comparison across categories: which category did the finetune change most?

For each category, the pair's mean per-text divergence (no prompt) over its texts, with a
95% confidence interval (normal approximation: mean +/- 1.96 * sd / sqrt(n)), sorted
highest first and written as CSV (first column the category), Markdown and a bar chart.
A text's divergence is measured over the finetuned model's answer to it (see
:func:`compare_categories`): a narrow finetune changes what the model says.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from finediff.data import load_category
from finediff.divergent_dataset import score_texts
from finediff import names
from finediff.io import atomic_path, markdown_table, write_text
from finediff.records import CategoryResult
from finediff.stats import mean_interval

BATCH_SIZE = 8
"""Texts teacher-forced at once."""
SCORED_POSITIONS = "response"
"""Where a text's divergence is measured: over the finetuned model's greedy answer (``text``: its own tokens)."""
MAX_NEW_TOKENS = 32
"""New tokens of the greedy answer a text is scored over."""


def summarise(category: str, values: list[float]) -> CategoryResult:
    mean, low, high, std = mean_interval(values)
    return CategoryResult(category, len(values), mean, low, high, std, max(values))


def compare_categories(pair, categories: list[str], max_texts: Optional[int] = 100, max_length: Optional[int] = None,
                       progress: bool = True) -> list[CategoryResult]:
    """Mean divergence per category with a 95% CI, highest first: each text scored by the
    pair's divergence over the finetuned model's greedy answer (:data:`MAX_NEW_TOKENS`
    tokens at most), both models teacher-forced (:data:`SCORED_POSITIONS`)."""
    results = []
    for category in categories:
        split = load_category(category, max_texts, val_fraction=0.0)
        if progress:
            print(f"scoring category {category} ({len(split.train)} texts)", flush=True)
        values = score_texts(pair, split.train, SCORED_POSITIONS, MAX_NEW_TOKENS, max_length, BATCH_SIZE, progress)
        results.append(summarise(category, values))
    return sorted(results, key=lambda r: r.mean_divergence, reverse=True)


def write_comparison(results: list[CategoryResult], out: Path, title: str = "") -> None:
    """``comparison.csv`` (first column the category), ``comparison.md`` and
    ``comparison.png`` (bar chart with CI whiskers) in ``out``."""
    where = "over the finetuned model's answers" if SCORED_POSITIONS == "response" else "over the texts"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(asdict(results[0])))
    writer.writeheader()
    for r in results:
        writer.writerow(asdict(r))
    write_text(Path(out) / names.COMPARISON_CSV, buf.getvalue())
    lines = [f"# Category comparison{': ' + title if title else ''}", ""]
    lines += markdown_table(["rank", "category", "texts", "mean divergence", "95% CI"],
                            [[i, r.category, r.n, f"{r.mean_divergence:.4f}", f"[{r.ci_low:.4f}, {r.ci_high:.4f}]"]
                             for i, r in enumerate(results, 1)])
    write_text(Path(out) / names.COMPARISON_MD, "\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 * len(results) + 1.5))
    labels = [r.category for r in results][::-1]
    means = [r.mean_divergence for r in results][::-1]
    errs = [r.mean_divergence - r.ci_low for r in results][::-1]
    ax.barh(labels, means, xerr=errs, color="#4c72b0", capsize=3)
    ax.set_xlabel(f"mean per-token KL(ft || base) {where}")
    ax.set_title(f"Divergence by category{': ' + title if title else ''}")
    fig.tight_layout()
    with atomic_path(Path(out) / names.COMPARISON_PNG) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
