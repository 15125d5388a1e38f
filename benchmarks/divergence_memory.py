"""Peak extra memory of the divergence loss (forward + backward), chunked vs unchunked.

    python benchmarks/divergence_memory.py [--batch 8 --positions 512 --vocab 49152]

The loss starts from final hidden states [B, L, D] of both models and applies each
model's output head (D -> V, SmolLM2's shape by default: D = 576, V = 49,152). The
unchunked computation materialises B*L x V logits, log-probabilities and their
gradients; the chunked one holds one chunk at a time. Memory is measured with
:func:`finediff.memory.peak_extra_bytes` (allocator events, tensors only).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from finediff.divergence import chunked_divergence
from finediff.memory import peak_extra_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--positions", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--kind", default="kl_ft_base")
    args = ap.parse_args()
    torch.manual_seed(0)
    B, L, D, V = args.batch, args.positions, args.hidden, args.vocab
    h_ft = torch.randn(B, L, D, requires_grad=True)
    h_base = torch.randn(B, L, D, requires_grad=True)
    heads = [torch.nn.Linear(D, V, bias=False).requires_grad_(False) for _ in range(2)]
    mask = torch.ones(B, L, dtype=torch.bool)

    results = {}
    for label, chunk in (("chunked", args.chunk_size), ("unchunked", None)):
        def fn():
            loss = chunked_divergence(h_ft, h_base, heads[0], heads[1], mask, args.kind, chunk_size=chunk)
            loss.backward()
            h_ft.grad = h_base.grad = None
        t = time.perf_counter()
        peak = peak_extra_bytes(fn)
        results[label] = {"peak_extra_MiB": round(peak / 2**20, 1), "seconds": round(time.perf_counter() - t, 2)}
    results["ratio"] = round(results["chunked"]["peak_extra_MiB"] / results["unchunked"]["peak_extra_MiB"], 4)
    results["shape"] = f"B={B} L={L} D={D} V={V} chunk={args.chunk_size} kind={args.kind}"
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
