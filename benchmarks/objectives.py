"""The soft prompt's objectives side by side on the shipped organisms.

    python benchmarks/objectives.py --organisms backdoor noop --steps 40 --out RUNS

For each organism and each objective in :data:`OBJECTIVES`, a soft prompt is trained with
``train.py`` on the everyday probe prompts (``data/probes/everyday.jsonl``: what the
audit's survey mostly reads, no hint of where the change is), then ``evaluate.py
task=elicit`` answers the organism's held-out off-target prompts with and without it.
Per row: the base shift the run logged at its scored positions, how often the learned
prompt changes the base's and the finetuned model's greedy answers, and how often each
model's answers with the prompt show the behaviour (the organism's checker). Prints one
markdown table; each run stays in ``OUT/ORGANISM/OBJECTIVE``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from finediff import names
from finediff.io import markdown_table

ROOT = Path(__file__).resolve().parent.parent
OBJECTIVES = {
    "text": ["module.positions=text"],
    "answers": ["module.positions=response"],
    "faithful": ["module=faithful"],
}
"""Today's audit objective (the text positions), the answer objective (the finetuned
model's answers) and the faithful one (both models' answers, special tokens out,
degenerate answers unscored, the base anchored)."""


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"{' '.join(cmd[:3])}... failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--organisms", nargs="+", required=True)
    ap.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--texts", type=int, default=120, help="everyday prompts read (a fifth held out)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    header = ["organism", "objective", "base shift (logged)", "base answers changed", "finetuned answers changed",
              "behaviour, finetuned: none / prompt", "behaviour, base: none / prompt", "train + elicit"]
    rows = markdown_table(header, [])
    for organism in args.organisms:
        for objective in args.objectives:
            out = args.out / organism / objective
            out.mkdir(parents=True, exist_ok=True)
            seconds = run([sys.executable, "train.py", f"experiment={organism}", f"paths.output_dir={out}",
                           "logger=csv", f"data.categories=[{ROOT / names.PROBES_FILE}]",
                           f"data.max_texts_per_category={args.texts}", f"trainer.max_steps={args.steps}",
                           f"trainer.val_check_interval={args.steps}", "validate_after_fit=false",
                           "evidence.steps=[]", *OBJECTIVES[objective]],
                          out / "train.out")
            seconds += run([sys.executable, "evaluate.py", "task=elicit", f"task.run_dir={out}",
                            f"experiment={organism}", "task.max_new_tokens=32"], out / "elicit.out")
            metrics = json.loads((out / names.METRICS_FILE).read_text())
            e = json.loads((out / names.ELICITATION_FILE).read_text())
            rates, changed = e["rates"], e["changed"]["soft"]
            rows += markdown_table(header, [[
                organism, objective, f"{metrics[names.VAL_BASE_SHIFT]:.3f}", f"{changed['base']:.0%}",
                f"{changed['finetuned']:.0%}", f"{rates['none']['finetuned']:.0%} / {rates['soft']['finetuned']:.0%}",
                f"{rates['none']['base']:.0%} / {rates['soft']['base']:.0%}", f"{seconds / 60:.1f} min"]])[2:]
            print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
