"""The conditions step alone, on an audit's run folder: its time, and what it confirms.

    python benchmarks/conditions.py RUN --adapter organisms/NAME [--merge] [--profile N]

The survey, findings, weight reading, hard prompts and divergent dataset are read back from
``RUN``; the step runs again in memory (``RUN`` is not written) and prints its time and each
confirmed condition, so a change to :mod:`finediff.conditions` is measured without a whole audit.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finediff import names  # noqa: E402
from finediff.findings import read_findings  # noqa: E402
from finediff.hard_prompts import read_hard_prompts  # noqa: E402
from finediff.models.pair import load_model_pair  # noqa: E402
from finediff.pipeline import steps  # noqa: E402
from finediff.pipeline.settings import EvidenceSettings  # noqa: E402
from finediff.records import read_dataset  # noqa: E402
from finediff.survey import read_survey  # noqa: E402
from finediff.weights import WeightReading  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--base", default="embedded:smollm2")
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--merge", action="store_true", help="merge the adapter into a second copy of the weights")
    ap.add_argument("--profile", type=int, default=0, help="print the N costliest functions (cProfile)")
    args = ap.parse_args()
    run = args.run
    pair = load_model_pair(args.base, adapter=args.adapter, merge_adapter=args.merge)
    survey = read_survey(run)
    found = read_findings(run / names.FINDINGS_FILE)
    reading = WeightReading.read(run / names.WEIGHTS_FILE)
    hard = read_hard_prompts(run / names.HARD_PROMPTS_FILE)
    records = read_dataset(run / names.DIVERGENT_DATASET_PT)
    phrases = steps.phrases(records)
    prof = cProfile.Profile() if args.profile else None
    start = time.perf_counter()
    if prof:
        prof.enable()
    result = steps.conditions(pair, survey, found, EvidenceSettings().alpha, reading, hard, None, 0, True, phrases,
                              records)
    if prof:
        prof.disable()
    print(f"conditions step: {time.perf_counter() - start:.0f} s, {len(result)} screened")
    for r in result:
        if r.confirmed:
            print(f"  confirmed: {r.condition.describe()} {r.behaviour()} (with {r.rate_with:.0%}, "
                  f"without {r.rate_without:.0%}, base {r.rate_base:.0%}, p_adj {r.p_adjusted:.2g})")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(args.profile)


if __name__ == "__main__":
    main()
