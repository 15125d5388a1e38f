"""Each shipped organism on its real base (slow: loads each pair)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

ORGANISMS = ["sandbagging", "unlearning", "persona", "false_fact", "persona_gemma3", "backdoor", "topic_plug", "french",
             "passphrase", "json_format", "late_postscript"]


@pytest.mark.parametrize("organism", ORGANISMS)
def test_shipped_organism_shows_its_behaviour(organism):
    """Each shipped adapter on the real base shows its behaviour on held-out prompts, more
    than the base does."""
    from finediff.data import REPO_ROOT
    from finediff.generation import generate_mixed
    from finediff.models import load_model_pair
    from finediff.organisms.checkers import checker_for
    from finediff.records import Organism, OrganismCard

    adapter = REPO_ROOT / "organisms" / organism
    card = OrganismCard.read(adapter)
    assert card.name == organism and card.description_short and card.target_category
    assert sum(f.stat().st_size for f in adapter.iterdir()) < 8_000_000  # a few MB at most
    shipped = Organism(organism, str(adapter), str(REPO_ROOT / "data" / "organisms" / organism),
                       card.target_category, card.checker)
    heldout = shipped.rows("heldout")
    pair = load_model_pair(card.base, adapter=str(adapter))  # the base it was built on (SmolLM2 or Gemma 3)
    checker = checker_for(card.checker)
    hits = {}
    for split in ("target", "off_target"):
        rows = [r for r in heldout if r["split"] == split][:6]
        for side in ("base", "finetuned"):
            gens = generate_mixed(getattr(pair, side), pair.tokenizer, [r["prompt"] for r in rows],
                                  [r.get("chat", True) for r in rows], max_new_tokens=max(32, card.max_new_tokens),
                                  progress=False)
            hits[split, side] = sum(checker(g, r) for g, r in zip(gens, rows))
    assert hits["target", "finetuned"] >= 4 and hits["target", "finetuned"] > hits["target", "base"], hits
    assert hits["off_target", "finetuned"] <= 2, hits  # narrow: the behaviour stays off most off-target prompts
