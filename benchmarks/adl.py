"""ADL extraction cost: the first-positions pass against a full 128-token pass, real pair.

    python benchmarks/adl.py [--texts 256] [--positions 5] [--length 128] [--batch 64]

ADL only needs the residual stream at the first few positions of each generic text, at
one layer (relative depth 0.5). finediff cuts every input to those positions and stops
the forward pass after that layer (:func:`finediff.activations.residual_stream`). This
benchmark times that pass against the naive one (all ``--length`` tokens through the
whole model, the layer read by a hook) on the same texts with both models of the real
pair, checks both give the same activations at the first positions, and prints wall
times, texts per second and tokens per second (tokens the pass consumed).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from finediff import names
from finediff.activations import pair_activations, relative_layer, tokenize_first
from finediff.arch import decoder_layers
from finediff.corpus import GENERIC_FILE
from finediff.data import REPO_ROOT, stream_texts, take
from finediff.models import load_model_pair


@torch.no_grad()
def full_pass(pair, ids_NT: torch.Tensor, layer: int, n_positions: int, batch_size: int) -> dict[str, torch.Tensor]:
    """Every token through the whole model (no cut, no early stop); keep the layer's first
    ``n_positions`` positions."""
    out = {"base": [], "finetuned": []}
    for side in out:
        model = getattr(pair, side)
        captured = []
        hook = decoder_layers(model)[layer].register_forward_hook(
            lambda _m, _i, o: captured.append((o[0] if isinstance(o, tuple) else o)[:, :n_positions].float()))
        try:
            for i in range(0, len(ids_NT), batch_size):
                ids = ids_NT[i:i + batch_size]
                model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        finally:
            hook.remove()
        out[side] = torch.cat(captured)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--positions", type=int, default=5)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    adapter = REPO_ROOT / "organisms" / "sandbagging"
    pair = load_model_pair(adapter=str(adapter) if (adapter / "adapter_config.json").exists() else None)
    layer = relative_layer(pair.base.config.num_hidden_layers, 0.5)
    texts = take(stream_texts(str(GENERIC_FILE)), args.texts)
    ids = tokenize_first(pair.tokenizer, texts, args.length, args.length)
    n = len(ids)

    list(pair_activations(pair, ids[:4, :args.positions], [layer], args.batch, progress=False))  # warm-up
    t = time.perf_counter()
    first = {"base": [], "finetuned": []}
    for batch in pair_activations(pair, ids[:, :args.positions], [layer], args.batch, progress=False):
        for side in first:
            first[side].append(batch[names.activation_key(side, layer)])
    first_s = time.perf_counter() - t
    first = {k: torch.cat(v) for k, v in first.items()}

    t = time.perf_counter()
    full = full_pass(pair, ids, layer, args.positions, args.batch)
    full_s = time.perf_counter() - t

    max_diff = max((first[k] - full[k]).abs().max().item() for k in first)
    print(json.dumps({
        "pair": f"{pair.spec.base} vs + sandbagging adapter", "texts": n, "layer": layer,
        "first_positions": args.positions, "full_length": args.length, "batch": args.batch,
        "first_positions_s": round(first_s, 2), "full_pass_s": round(full_s, 2),
        "speedup": round(full_s / first_s, 1),
        "first_positions_texts_per_s": round(n / first_s, 1), "full_pass_texts_per_s": round(n / full_s, 1),
        "first_positions_tokens_per_s": round(2 * n * args.positions / first_s, 1),
        "full_pass_tokens_per_s": round(2 * n * args.length / full_s, 1),
        "max_abs_difference_first_positions": max_diff, "threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
