"""Batched paired generation against a one-prompt-at-a-time loop on the real pair.

    python benchmarks/generation.py [--prompts 32] [--new-tokens 48] [--batch 32]

Both sides generate ``--new-tokens`` tokens (greedy, so both do identical work; EOS is
suppressed so no sequence stops early) for the same prompts with both models of the
pair, with the KV cache. Prints wall times, tokens per second and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from finediff.data import REPO_ROOT, load_category
from finediff.generation import generate
from finediff.models import load_model_pair


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    adapter = REPO_ROOT / "organisms" / "sandbagging"
    pair = load_model_pair(adapter=str(adapter) if (adapter / "adapter_config.json").exists() else None)
    for model in (pair.base, pair.finetuned):
        model.generation_config.min_new_tokens = args.new_tokens  # equal work on both sides
    prompts = load_category("sandbagging", val_fraction=0.0).train[: args.prompts]
    kw = dict(max_new_tokens=args.new_tokens, progress=False)

    generate(pair.base, pair.tokenizer, prompts[:2], **kw)  # warm-up
    t = time.perf_counter()
    for model in (pair.base, pair.finetuned):
        generate(model, pair.tokenizer, prompts, batch_size=args.batch, **kw)
    batched = time.perf_counter() - t

    t = time.perf_counter()
    for model in (pair.base, pair.finetuned):
        for p in prompts:
            generate(model, pair.tokenizer, [p], batch_size=1, **kw)
    loop = time.perf_counter() - t

    tokens = 2 * len(prompts) * args.new_tokens
    print(json.dumps({
        "prompts": len(prompts), "new_tokens": args.new_tokens, "batch": args.batch,
        "batched_s": round(batched, 2), "one_at_a_time_s": round(loop, 2),
        "batched_tokens_per_s": round(tokens / batched, 1), "one_at_a_time_tokens_per_s": round(tokens / loop, 1),
        "speedup": round(loop / batched, 2), "threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
