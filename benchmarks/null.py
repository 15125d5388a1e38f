"""The false-claim rate on finetunes that changed no behaviour: build them, audit each untold.

    python benchmarks/null.py                 # build the missing ones, audit each, print the table
    python benchmarks/null.py --only null_seed1 --table-only

Every finetune here is built with ``build_organism.py`` from the noop recipe, each of a
different kind (the base's own greedy answers with another seed, more steps and a larger
learning rate, or a few fast steps; the base's own sampled answers, i.e. its rewordings
of itself; a LoRA of random small weights, never trained). None changes a behaviour, so
every claim an audit confirms on one is a false claim. Adapters and runs go under the
user's cache directory; each audit is the README's (``experiment=audit model.adapter=DIR``).
The table gives the confirmed claims of each audit and its first screen's first sentence.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from finediff import names  # noqa: E402
from finediff.models.sources import cache_dir  # noqa: E402

NULLS = {
    "null_seed1": ("the base's greedy answers, other prompts (seed 1), 60 steps", ["seed=1"]),
    "null_long": ("the base's greedy answers (seed 2), 120 steps at twice the learning rate",
                  ["seed=2", "steps=120", "learning_rate=0.002"]),
    "null_fast": ("the base's greedy answers (seed 3), 30 steps at 5x the learning rate",
                  ["seed=3", "steps=30", "learning_rate=0.005"]),
    "null_sampled": ("the base's own sampled answers at temperature 1 (its rewordings), 60 steps",
                     ["seed=4", "+organism.recipe_options.sampled=1.0"]),
    "null_random": ("random LoRA up-projections (std 0.1), never trained",
                    ["seed=5", "+organism.recipe_options.random_lora=0.1"]),
}
"""Each no-op finetune: what it is, and its ``build_organism.py organism=noop`` overrides."""


def build(name: str, folder: Path) -> float:
    t0 = time.time()
    cmd = [sys.executable, "build_organism.py", "organism=noop", f"organism.name={name}", "organism.recipe=noop",
           f"out_dir={folder / name}", f"data_dir={folder / (name + '_data')}", *NULLS[name][1]]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.time() - t0


def audit(name: str, folder: Path) -> Path:
    run = folder / "runs" / name
    cmd = [sys.executable, "train.py", "experiment=audit", f"model.adapter={folder / name}",
           f"paths.output_dir={run}"]
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "WANDB_MODE": "offline"})
    return run


def row(name: str, run: Path) -> str:
    from finediff.claims import audit_claims
    from finediff.io import read_json
    from finediff.summary import read_verdict
    from finediff.survey import read_survey

    claims = audit_claims(run)
    behaviours = [c for c in claims if c.behaviour]
    confirmed = [c for c in behaviours if c.confirmed]
    groups = [c.text.rsplit(" on ", 1)[-1] for c in claims if not c.behaviour and c.confirmed]
    v = read_verdict(run)
    first = re.sub(r"\*\*", "", v.paragraph).split(". ")[0] if v else "-"
    metrics = read_json(run / names.METRICS_FILE) if (run / names.METRICS_FILE).is_file() else {}
    secs = metrics.get(names.RUN_TIME)
    took = f"{secs // 60:.0f} min {secs % 60:.0f} s" if secs else "-"
    shown = "; ".join(c.text for c in confirmed) or "none"
    median = read_survey(run).median_divergence
    return (f"| {name} | {NULLS[name][0]} | {median:.3f} | {len(confirmed)} of {len(behaviours)} ({shown}) | "
            f"{', '.join(groups) or 'none'} | {first} | {took} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=list(NULLS), choices=list(NULLS))
    ap.add_argument("--folder", type=Path, default=cache_dir() / "null")
    ap.add_argument("--table-only", action="store_true", help="print the table of the runs already made")
    ap.add_argument("--build-only", action="store_true", help="build the missing finetunes, audit none")
    args = ap.parse_args()
    for name in args.only:
        if args.table_only:
            continue
        if not (args.folder / name / names.CARD_FILE).is_file():
            print(f"{name}: built in {build(name, args.folder):.0f} s", flush=True)
        if not args.build_only and not (args.folder / "runs" / name / names.REPORT_MD).is_file():
            audit(name, args.folder)
    print("| no-op finetune | what it is | median divergence (nats per token) | confirmed behaviour claims (of those "
          "tested) | groups where the divergence concentrates | first sentence of the first screen | audit time |")
    print("|---|---|---|---|---|---|---|")
    for name in args.only:
        run = args.folder / "runs" / name
        if (run / names.REPORT_MD).is_file():
            print(row(name, run))


if __name__ == "__main__":
    main()
