"""Does amplified sampling surface a finetune's behaviour more often?

    python benchmarks/amplification.py --organism sandbagging --alpha 0 1 2 --samples 4

Samples the finetuned side of the embedded pair (base + the organism's adapter) on the
organism's held-out off-target prompts, plainly (alpha 0) and from the amplified logits
``logits_ft + alpha * (logits_ft - logits_base)``, and prints how often the organism's
checker fires per sample at each alpha.
"""

from __future__ import annotations

import argparse
import time

from finediff.amplification import amplified_generate
from finediff.data import REPO_ROOT
from finediff.io import read_jsonl
from finediff.models import load_model_pair
from finediff.organisms.checkers import checker_for
from finediff import names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--organism", required=True)
    ap.add_argument("--alpha", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    rows = [r for _, r in read_jsonl(REPO_ROOT / "data" / "organisms" / args.organism / names.ORGANISM_HELDOUT_FILE)
            if r["split"] == "off_target"][: args.prompts]
    if not rows:
        raise SystemExit(f"finediff: error: organism {args.organism!r} has no held-out off-target prompts")
    pair = load_model_pair(adapter=str(REPO_ROOT / "organisms" / args.organism))
    checker = checker_for(args.organism)
    expanded = [r for r in rows for _ in range(args.samples)]
    for alpha in args.alpha:
        t = time.time()
        hits = 0
        for chat in (True, False):  # chat prompts under the template, plain documents as they are
            part = [r for r in expanded if r.get("chat", True) == chat]
            if part:
                gens = amplified_generate(pair, [r["prompt"] for r in part], alpha, args.max_new_tokens, seed=0,
                                          chat_template=chat)
                hits += sum(checker(g, r) for g, r in zip(gens, part))
        rate = hits / len(expanded)
        print(f"{args.organism} alpha {alpha:g}: checker fires on {rate:.1%} of {len(expanded)} off-target samples "
              f"({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
