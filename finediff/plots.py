"""Plots written next to the JSON summaries (PNG, atomic, Agg backend)."""

from __future__ import annotations

from pathlib import Path

from finediff.io import atomic_path
from finediff.records import LensSummary


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _plt().close(fig)
    return path


def lens_norms(summary: LensSummary, path: Path) -> Path:
    """Norm of the mean activation difference per position, one line per layer."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for layer, entry in summary.layers.items():
        norms = [p.diff_norm for p in entry.positions]
        ax.plot(range(len(norms)), norms, marker="o", label=f"layer {layer}")
    ax.set_xlabel("position")
    ax.set_ylabel("|mean(h_ft - h_base)|")
    ax.set_title("Activation difference norm by position")
    ax.legend()
    fig.tight_layout()
    return save(fig, path)


def lens_relevance(summary: LensSummary, path: Path) -> Path:
    """Token relevance of the difference against the base-mean and finetuned-mean controls."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    layers = list(summary.layers.items())
    keys = ["difference_patchscope", "difference_logit_lens", "base_mean", "finetuned_mean"]
    width = 0.8 / max(len(layers), 1)
    for j, (layer, entry) in enumerate(layers):
        rel = entry.relevance_max_over_positions or {}
        ax.bar([i + j * width for i in range(len(keys))], [rel.get(k, 0.0) for k in keys], width,
               label=f"layer {layer}")
    ax.set_xticks([i + width * (len(layers) - 1) / 2 for i in range(len(keys))])
    ax.set_xticklabels(["diff (patchscope)", "diff (logit lens)", "base mean", "ft mean"], fontsize=8)
    ax.set_ylabel("share of top tokens relevant")
    ax.set_ylim(0, 1)
    ax.set_title("ADL token relevance")
    ax.legend()
    fig.tight_layout()
    return save(fig, path)


def histogram(values: list[float], path: Path, xlabel: str, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(values, bins=50, color="#4c72b0")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("tokens")
    ax.set_yscale("log")
    ax.set_title(title)
    fig.tight_layout()
    return save(fig, path)


def by_layer(means: list[float], path: Path, ylabel: str, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(means)), means, marker="o")
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return save(fig, path)
