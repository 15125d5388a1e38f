"""How an untold audit run did, judged afterwards with the organism's checker.

    python benchmarks/audit.py RUN_DIR --organism sandbagging

Prints the first 40 lines of the run's ``report.md``, how many of the 10 highest-divergence
records of its divergent dataset show the organism's behaviour, the first screen's length in
words (before its table), the kind of change it names and whether its quoted answers show the
behaviour. The checker is applied here, outside the run: the run itself was given only the adapter.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from finediff import names
from finediff.organisms.checkers import checker_for
from finediff.records import read_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--organism", required=True)
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    checker = checker_for(args.organism)  # a shipped organism's checker has its name
    print("\n".join((args.run / names.REPORT_MD).read_text().splitlines()[:40]))
    records = read_dataset(args.run / names.DIVERGENT_DATASET_JSONL)[: args.top]
    shown = [checker(r.generation_2, {"prompt": r.prompt}) for r in records]
    amplified = sum(r.amplification is not None for r in records)
    print(f"\n{args.organism}: the checker fires on {sum(shown)} of the {len(records)} highest-divergence records "
          f"({amplified} of them amplified samples)")
    from finediff.data import REPO_ROOT
    from finediff.summary import read_verdict
    from finediff.sweep import run_row

    verdict = read_verdict(args.run)
    words = len(re.sub(r"[*«»]", "", verdict.paragraph).split()) if verdict else 0
    row = run_row(args.run, lambda _: {"adapter": str(REPO_ROOT / "organisms" / args.organism)})
    print(f"first screen: {words} words before its table; kind of change: {row['kind'] or '-'}; "
          f"quoted answers the checker flags: {row['quote_passes'] or '-'}")


if __name__ == "__main__":
    main()
