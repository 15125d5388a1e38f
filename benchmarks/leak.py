"""How often an organism's behaviour shows on the survey's everyday probes, per probe domain.

    python benchmarks/leak.py organisms/backdoor --domains "in French" "in German" "in Spanish"

For each domain of ``data/probes/everyday.jsonl`` (all of them when ``--domains`` is not
given), both models answer every probe greedily (48 new tokens, as ``task=verify`` does) and
the organism card's checker counts the answers that show the behaviour. A conditional
organism should show nothing here: what shows is what an audit could find by leakage alone.
"""

from __future__ import annotations

import argparse

from finediff import names
from finediff.data import REPO_ROOT
from finediff.generation import generate
from finediff.io import markdown_table, read_jsonl
from finediff.models import load_model_pair
from finediff.organisms.checkers import checker_for
from finediff.records import OrganismCard


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("adapter")
    ap.add_argument("--domains", nargs="*", default=None, help="probe domains (default: all)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()

    card = OrganismCard.read(args.adapter)
    check = checker_for(card.checker)
    pair = load_model_pair(card.base or "embedded:smollm2", adapter=args.adapter)
    probes = [row for _, row in read_jsonl(REPO_ROOT / names.PROBES_FILE)]
    domains = args.domains or sorted({p["domain"] for p in probes})
    header = ["domain", "base", "finetuned"]
    print("\n".join(markdown_table(header, [])))
    for domain in domains:
        prompts = [p["text"] for p in probes if p["domain"] == domain]
        if not prompts:
            raise SystemExit(f"leak: no probe has the domain {domain!r}")
        row = [domain]
        for side in names.SIDES:
            gens = generate(getattr(pair, side), pair.tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                            progress=False)
            row.append(f"{sum(bool(check(g, {'prompt': p})) for g, p in zip(gens, prompts))}/{len(prompts)}")
        print(markdown_table(header, [row])[-1], flush=True)


if __name__ == "__main__":
    main()
