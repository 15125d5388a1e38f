"""Residual-stream activations of both models, and an on-disk activation cache.

Naming: ``resid_BPD`` is the output of a decoder layer (the residual stream after it) for
``B`` texts, ``P`` positions and ``D`` hidden dims; layer ``l`` is 0-based, so layer
``num_layers - 1`` is the last block (before the final norm).

Only the positions and layers asked for are computed: inputs are cut to the first ``P``
tokens (the model is causal, so later tokens cannot change them) and the forward pass
stops after the deepest requested layer.

The cache (written by a preprocessing pass, read by the diffing pass) is a folder of
``safetensors`` shards plus ``index.json``: for each shard, the tensors
``names.activation_key(side, l)`` (``finetuned.layer14``) of shape ``[B, P, D]`` with ``input_ids [B, P]`` and ``attention_mask``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator, Optional

import torch
from tqdm.auto import tqdm

from finediff import names
from finediff.arch import decoder_layers, input_device
from finediff.errors import FinediffError
from finediff.io import atomic_path, write_json



class _Stop(Exception):
    pass


def relative_layer(num_layers: int, depth: float = 0.5) -> int:
    """The paper's layer choice: ``int(depth * (num_layers - 1))`` (layer 14 of SmolLM2's 30)."""
    if not 0.0 <= depth <= 1.0:
        raise FinediffError(f"relative layer depth must be in [0, 1], got {depth}")
    return int(depth * (num_layers - 1))


@torch.no_grad()
def residual_stream(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Iterable[int],
                    n_positions: Optional[int] = None) -> dict[int, torch.Tensor]:
    """Outputs of the given decoder layers, ``{layer: [B, P, D]}`` in float32.

    The input is cut to ``n_positions`` tokens and the forward pass stops after the
    deepest requested layer. The outputs are on ``input_ids``' device, wherever the
    model's layers are placed.
    """
    layers = sorted(set(layers))
    blocks = decoder_layers(model)
    if not layers or layers[0] < 0 or layers[-1] >= len(blocks):
        raise FinediffError(f"layers {layers} out of range for a {len(blocks)}-layer model")
    if n_positions:
        input_ids, attention_mask = input_ids[:, :n_positions], attention_mask[:, :n_positions]
    out: dict[int, torch.Tensor] = {}
    hooks = []

    def make_hook(layer: int):
        def hook(_module, _inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            out[layer] = hidden.detach().float().to(input_ids.device)
            if layer == layers[-1]:
                raise _Stop
        return hook

    for layer in layers:
        hooks.append(blocks[layer].register_forward_hook(make_hook(layer)))
    try:
        device = input_device(model)
        model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
    return out


def tokenize_first(tokenizer, texts: list[str], n_positions: int, min_tokens: int = 0) -> torch.Tensor:
    """``[N, n_positions]`` ids of the texts' first tokens (plain text, the tokenizer's own
    special tokens); texts shorter than ``min_tokens`` are dropped."""
    rows = []
    for t in texts:
        ids = tokenizer(t)["input_ids"]
        if len(ids) >= max(min_tokens, n_positions):
            rows.append(ids[:n_positions])
    if not rows:
        raise FinediffError(f"no text has {max(min_tokens, n_positions)} tokens or more")
    return torch.tensor(rows, dtype=torch.long)


def pair_activations(pair, ids_NP: torch.Tensor, layers: list[int], batch_size: int = 32,
                     progress: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``{"input_ids", "base.layer{l}", "finetuned.layer{l}"}`` for full-length rows."""
    mask = torch.ones_like(ids_NP)
    for i in tqdm(range(0, len(ids_NP), batch_size), desc="activations", disable=not progress):
        batch = {"input_ids": ids_NP[i:i + batch_size], "attention_mask": mask[i:i + batch_size]}
        for side in names.SIDES:
            acts = residual_stream(getattr(pair, side), batch["input_ids"], batch["attention_mask"], layers)
            batch.update({names.activation_key(side, l): a for l, a in acts.items()})
        yield batch


def write_cache(batches: Iterable[dict[str, torch.Tensor]], folder: str | Path, meta: dict) -> Path:
    """Write activation batches as safetensors shards plus ``index.json`` (written last)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for i, batch in enumerate(batches):
        name = f"shard_{i:05d}.safetensors"
        with atomic_path(folder / name) as tmp:
            save_file({k: v.contiguous() for k, v in batch.items()}, str(tmp))
        shards.append({"file": name, "rows": int(batch["input_ids"].shape[0])})
    write_json(folder / names.CACHE_INDEX, {**meta, "shards": shards})
    return folder


def read_cache(folder: str | Path) -> tuple[dict, Iterator[dict[str, torch.Tensor]]]:
    """``(index, iterator over shards)`` of a cache written by :func:`write_cache`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    index_path = folder / names.CACHE_INDEX
    if not index_path.exists():
        raise FinediffError(f"no activation cache in {folder} (missing {names.CACHE_INDEX}); run pipeline.mode=preprocessing")
    index = json.loads(index_path.read_text())

    def shards():
        for shard in index["shards"]:
            yield load_file(str(folder / shard["file"]))

    return index, shards()
