"""What each organism's weight update writes and reads (no sampling), as one Markdown table.

    python benchmarks/weights.py organisms/sandbagging organisms/backdoor ...

Each row: the tokens the update writes (output directions through the final norm and the
unembedding) and the tokens its early layers read (input directions against the normed
embeddings), strongest first, and the wall time of the reading (:mod:`finediff.weights`).
"""

from __future__ import annotations

import argparse
import time

from finediff.io import markdown_table
from finediff.models import load_model_pair
from finediff.records import OrganismCard
from finediff.weights import read_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("adapters", nargs="+")
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()

    header = ["organism", "writes", "early layers read", "modules changed", "seconds"]
    print("\n".join(markdown_table(header, [])))
    for adapter in args.adapters:
        card = OrganismCard.read(adapter)
        pair = load_model_pair(card.base or "embedded:smollm2", adapter=adapter)
        t0 = time.perf_counter()
        r = read_weights(pair.base, pair.finetuned, pair.tokenizer)
        took = time.perf_counter() - t0

        def show(tokens) -> str:
            return ", ".join(f"`{t.strip()}`" if t.strip() else repr(t) for t, _ in tokens[: args.top])

        row = [card.name, show(r.writes), show(r.reads), r.n_modules, f"{took:.0f}"]
        print(markdown_table(header, [row])[-1], flush=True)


if __name__ == "__main__":
    main()
