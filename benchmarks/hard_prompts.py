"""Scoring many hard prompts at once from a cached chat header, against splicing each
prompt into every row, on the real pair.

    python benchmarks/hard_prompts.py [--prompts 12] [--texts 16]

Both sides compute the same numbers: each prompt's mean divergence at the text positions
of the same texts (the hard-prompt search's objective). The batched side is
:func:`finediff.hard_prompts.prompt_divergences`; the other calls
:func:`finediff.divergence.pair_divergence` once per prompt and batch of 4 texts, as the
search did before. Prints wall times, the speed-up and the largest difference.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from finediff.data import REPO_ROOT, collate, format_parts, load_category
from finediff.divergence import pair_divergence
from finediff.hard_prompts import prompt_divergences
from finediff.models import load_model_pair


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--texts", type=int, default=16)
    args = ap.parse_args()
    adapter = REPO_ROOT / "organisms" / "sandbagging"
    pair = load_model_pair(adapter=str(adapter) if (adapter / "adapter_config.json").exists() else None)
    tok = pair.tokenizer
    texts = load_category("capabilities", val_fraction=0.0).train
    batches = [collate([format_parts(tok, t) for t in texts[i:i + 4]], tok.pad_token_id, 64)
               for i in range(0, args.texts, 4)]
    pool = texts[args.texts:]
    prompts = [torch.tensor(tok(t, add_special_tokens=False)["input_ids"][:16]) for t in pool[: args.prompts]]

    prompt_divergences(pair, prompts[:1], batches[:1])  # warm-up
    t = time.perf_counter()
    batched = prompt_divergences(pair, prompts, batches)
    batched_s = time.perf_counter() - t

    t = time.perf_counter()
    spliced = []
    with torch.no_grad():
        for p in prompts:
            total = count = 0.0
            for b in batches:
                n = float(b["attention_mask"].sum() - b["prompt_pos"].sum())  # the scored positions
                total += n * pair_divergence(pair, b["input_ids"], b["attention_mask"], p,
                                             prompt_pos=b["prompt_pos"]).item()
                count += n
            spliced.append(total / count)
    spliced_s = time.perf_counter() - t

    print(json.dumps({
        "prompts": len(prompts), "texts": args.texts, "batched_s": round(batched_s, 2),
        "spliced_s": round(spliced_s, 2), "speedup": round(spliced_s / batched_s, 2),
        "max_abs_difference": float((batched - torch.tensor(spliced)).abs().max()),
        "threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
