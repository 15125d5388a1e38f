"""The divergence without a gradient: computed in place against the gradient path's temporaries.

    python benchmarks/kl.py [--positions 256] [--vocab 262144] [--hidden 640]

On random logits of ``positions x vocab`` (Gemma-3-270M's vocabulary and hidden size by
default), :func:`finediff.divergence.token_divergence` under ``torch.no_grad()`` (what every
scoring pass runs: the log-probabilities are used up in place) against the same call on
logits that require a gradient (the out-of-place path the soft prompt's training needs),
beside one output head's ``hidden -> vocab`` matrix product for the same positions (what
each model spends to make the logits). Prints wall times (mean of 3) and the largest
difference as JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from finediff.divergence import token_divergence


def timed(fn, repeats: int = 3) -> tuple[float, object]:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return round((time.perf_counter() - t) / repeats, 3), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=262144)
    ap.add_argument("--hidden", type=int, default=640)
    args = ap.parse_args()
    torch.manual_seed(0)
    h, head = torch.randn(args.positions, args.hidden), torch.randn(args.vocab, args.hidden) * 0.02
    lf, lb = torch.randn(args.positions, args.vocab), torch.randn(args.positions, args.vocab)
    grad_lf = lf.clone().requires_grad_()
    with torch.no_grad():
        head_s, _ = timed(lambda: h @ head.T)
        in_place_s, fast = timed(lambda: token_divergence(lf, lb))
    out_of_place_s, slow = timed(lambda: token_divergence(grad_lf, lb))
    print(json.dumps({"positions": args.positions, "vocabulary": args.vocab, "threads": torch.get_num_threads(),
                      "output_head_s": head_s, "kl_out_of_place_s": out_of_place_s, "kl_in_place_s": in_place_s,
                      "speedup": round(out_of_place_s / in_place_s, 2),
                      "max_difference": float((fast - slow.detach()).abs().max())}, indent=2))


if __name__ == "__main__":
    main()
