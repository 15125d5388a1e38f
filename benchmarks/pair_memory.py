"""Memory and step time of an adapter pair held as two merged copies or as one shared copy.

    python benchmarks/pair_memory.py [--adapter organisms/sandbagging] [--steps 6] [--batch 4] [--length 64]

Each way (``model.merge_adapter=true``: the adapter merged into a second copy of the
weights; ``false``: one copy shared by both sides, the adapter unmerged on the finetuned
side) runs in its own process: load the embedded pair with the adapter, then ``--steps``
soft-prompt steps (forward through both models, backward to the prompt) on batches of
``--batch x --length`` tokens. Prints, for each, the resident memory the loaded pair adds
to the process once each side has run a forward pass (its weights), the peak resident memory of the process (and how much of it
came after the libraries were imported: the pair, and the activations its steps keep for
the backward pass, which are the same either way) and the median step, then the ratios
shared / merged.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from finediff.data import REPO_ROOT, format_text, load_category
from finediff.divergence import pair_divergence
from finediff.models import load_model_pair


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(merge: bool, args) -> dict:
    import peft  # noqa: F401  (the libraries count in the baseline, the pair after it)
    import transformers  # noqa: F401

    torch.manual_seed(0)
    before = _rss_mb()
    t = time.perf_counter()
    pair = load_model_pair(adapter=args.adapter, merge_adapter=merge)
    load_s = time.perf_counter() - t

    with torch.no_grad():  # touch every weight once (loaded tensors may be paged in lazily)
        probe = torch.tensor([[1, 2, 3, 4]])
        pair.base(probe)
        pair.finetuned(probe)
    gc.collect()
    loaded = _rss_mb() - before
    tok = pair.tokenizer
    texts = load_category("sandbagging", val_fraction=0.0).train
    embed = pair.base.get_input_embeddings().weight
    prompt = embed[torch.randint(0, embed.shape[0], (8,))].detach().clone().requires_grad_(True)
    steps = []
    for i in range(args.steps + 1):
        chunk = texts[i * args.batch:(i + 1) * args.batch]
        ids = torch.tensor([(format_text(tok, x) * 4)[:args.length] for x in chunk])
        t = time.perf_counter()
        loss = -pair_divergence(pair, ids, torch.ones_like(ids), prompt)
        loss.backward()
        steps.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"shares_weights": pair.shares_weights, "load_s": round(load_s, 2), "pair_rss_mb": round(loaded),
            "peak_rss_mb": round(peak), "peak_after_imports_mb": round(peak - before),
            "step_s": round(statistics.median(steps[1:]), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", default=str(REPO_ROOT / "organisms" / "sandbagging"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--child", choices=["merged", "shared"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child == "merged", args)))
        return
    result = {"adapter": args.adapter, "batch": f"{args.batch} x {args.length} tokens", "steps": args.steps}
    for way in ("merged", "shared"):
        run = subprocess.run([sys.executable, __file__, "--child", way, "--adapter", args.adapter, "--steps",
                              str(args.steps), "--batch", str(args.batch), "--length", str(args.length)],
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"finediff: error: the {way} run failed: {run.stderr.strip().splitlines()[-1]}")
        result[way] = json.loads(run.stdout.strip().splitlines()[-1])
    m, s = result["merged"], result["shared"]
    result["pair_ratio"] = round(s["pair_rss_mb"] / m["pair_rss_mb"], 3)
    result["peak_ratio"] = round(s["peak_rss_mb"] / m["peak_rss_mb"], 3)
    result["peak_after_imports_ratio"] = round(s["peak_after_imports_mb"] / m["peak_after_imports_mb"], 3)
    result["step_ratio"] = round(s["step_s"] / m["step_s"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
