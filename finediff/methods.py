"""The diffing toolkit's KL and norm-difference methods, over an activation cache.

* ``preprocess``: tokenize a dataset (first ``n_tokens`` tokens of each text), run both
  models and write the residual stream of the chosen layers (the last layer always
  included) to an activation cache (:mod:`finediff.activations`).
* ``kl``: from the cached last-layer activations, each model's final norm and
  unembedding give next-token distributions; per-token KL(ft||base), its statistics and
  the max-KL examples with every token's KL (for highlighting).
* ``normdiff``: per-token, per-layer ``|h_ft - h_base|``; mean per layer, statistics and
  the max examples at the layer with the largest mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from finediff import names
from finediff.activations import pair_activations, read_cache, tokenize_first, write_cache
from finediff.arch import final_norm, output_head
from finediff.errors import FinediffError
from finediff.io import write_json
from finediff.metrics import kl_per_position
from finediff.names import activation_key
from finediff.plots import by_layer, histogram


def preprocess(pair, texts: list[str], folder, layers: Optional[list[int]] = None, n_tokens: int = 64,
               batch_size: int = 16, progress: bool = True) -> dict:
    """Write the activation cache; return its index metadata."""
    last = pair.num_layers - 1
    layers = sorted(set(layers or range(pair.num_layers)) | {last})
    ids = tokenize_first(pair.tokenizer, texts, n_tokens, n_tokens)
    meta = {"layers": layers, "n_tokens": n_tokens, "n_texts": int(len(ids)), "last_layer": last,
            "pair": pair.spec.as_dict()}
    write_cache(pair_activations(pair, ids, layers, batch_size, progress), folder, meta)
    return meta


def _stats(values: torch.Tensor) -> dict:
    v = values.flatten().float()
    q = torch.quantile(v, torch.tensor([0.5, 0.9, 0.99])) if v.numel() else torch.zeros(3)
    return {"mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0, "median": float(q[0]),
            "p90": float(q[1]), "p99": float(q[2]), "max": float(v.max()), "n_tokens": int(v.numel())}


def _examples(tokenizer, ids_NT: torch.Tensor, values_NT: torch.Tensor, k: int) -> list[dict]:
    order = values_NT.max(dim=1).values.argsort(descending=True)[:k]
    out = []
    for i in order.tolist():
        toks = [tokenizer.decode([t]) for t in ids_NT[i].tolist()]
        out.append({"max": float(values_NT[i].max()), "mean": float(values_NT[i].mean()),
                    "tokens": [[t, round(float(v), 5)] for t, v in zip(toks, values_NT[i].tolist())]})
    return out


@torch.no_grad()
def kl_method(pair, folder, top_examples: int = 10) -> tuple[dict, list[float]]:
    """Per-token KL(ft||base) from the cached last-layer activations."""
    index, shards = read_cache(folder)
    last = index["last_layer"]
    ids, kls = [], []
    norms = final_norm(pair.finetuned), final_norm(pair.base)
    heads = output_head(pair.finetuned), output_head(pair.base)
    for shard in shards:
        h_ft, h_base = shard[activation_key("finetuned", last)], shard[activation_key("base", last)]
        kls.append(kl_per_position(heads[0](norms[0](h_ft)), heads[1](norms[1](h_base))))
        ids.append(shard["input_ids"])
    kl, ids = torch.cat(kls), torch.cat(ids)
    summary = {"method": "kl", "layer": last, "stats": _stats(kl),
               "max_examples": _examples(pair.tokenizer, ids, kl, top_examples)}
    return summary, kl.flatten().tolist()


@torch.no_grad()
def normdiff_method(tokenizer, folder, top_examples: int = 10) -> dict:
    """Per-token, per-layer norm of the activation difference."""
    index, shards = read_cache(folder)
    layers = index["layers"]
    per_layer: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    ids = []
    for shard in shards:
        ids.append(shard["input_ids"])
        for l in layers:
            per_layer[l].append((shard[activation_key("finetuned", l)] - shard[activation_key("base", l)]).norm(dim=-1))
    ids = torch.cat(ids)
    norms = {l: torch.cat(v) for l, v in per_layer.items()}
    means = {str(l): float(v.mean()) for l, v in norms.items()}
    peak = max(layers, key=lambda l: means[str(l)])
    return {"method": "normdiff", "layers": layers, "mean_by_layer": means, "peak_layer": peak,
            "stats_peak_layer": _stats(norms[peak]),
            "max_examples": _examples(tokenizer, ids, norms[peak], top_examples)}


def run_method(method: str, pair, cache, folder, top_examples: int = 10) -> dict:
    """Run ``kl`` or ``normdiff`` over the cache; write ``summary.json`` and its plot into
    ``folder``; return the summary."""
    folder = Path(folder)
    if method == "kl":
        summary, values = kl_method(pair, cache, top_examples)
        histogram(values, folder / names.KL_HIST_PNG, "KL(ft || base) per token", "Per-token KL distribution")
    elif method == "normdiff":
        summary = normdiff_method(pair.tokenizer, cache, top_examples)
        by_layer(list(summary["mean_by_layer"].values()), folder / names.NORMDIFF_PNG,
                 "mean |h_ft - h_base|", "Activation difference norm by layer")
    else:
        raise FinediffError(f"unknown diffing method {method!r}; choose adl, kl or normdiff")
    write_json(folder / names.DIFF_SUMMARY, summary)
    return summary
