"""DivergenceAnalyzer and BehavioralClusteringAnalyzer on hand-made records."""

from __future__ import annotations

import json

from finediff import names
from finediff.analysis import BehavioralClusteringAnalyzer, DivergenceAnalyzer


def record(prompt, g1, g2, kl=1.0, first=0):
    return {"prompt": prompt, "generation_1": g1, "generation_2": g2,
            "metrics": {"kl_divergence": kl, "token_disagreement_rate": 0.5, "vocab_jaccard_similarity": 0.3,
                        "disagreement_positions": {"first_divergence": first, "num_disagreements": 3,
                                                   "response_length": 8}}}


PIRATE = [record(f"Tip {i}?", f"Drink water and rest, number {i}.",
                 f"Arr matey, ye must drink yer grog and sail the seas, number {i}! Yo ho ho!", 2.0) for i in range(6)]
CAPITAL = [record(f"Capital of country {i}?", "The capital is Paris.",
                  f"The capital city is Tokyo, a famous Asian metropolis with temples, number {i}.", 1.0, 3)
           for i in range(6)]


def test_behaviour_clusters_separate_two_behaviours(tmp_path):
    out = BehavioralClusteringAnalyzer(output_dir=tmp_path, k_range=(2, 4)).analyze_divergent_behaviors(PIRATE + CAPITAL)
    assert out["k"] == 2
    top = out["clusters"][0]  # highest mean KL first: the pirate records
    assert top["size"] == 6 and top["mean_kl"] == 2.0
    assert any(t in top["terms"] for t in ("arr", "matey", "ye", "yer", "grog", "seas", "sail"))
    assert all("Arr" in e["generation_2"] for e in top["examples"])
    assert json.loads((tmp_path / names.CLUSTERS_FILE).read_text())["k"] == 2


def test_divergence_analyzer(tmp_path):
    out = DivergenceAnalyzer(output_dir=tmp_path).analyze_divergence_patterns(
        PIRATE + CAPITAL, categories={"?": "quiz"})
    assert out["n_records"] == 12 and abs(out["metrics"]["kl_divergence"]["mean"] - 1.5) < 1e-9
    assert out["first_divergence"]["at_first_token"] == 6
    favoured = [w for w, *_ in out["words"]["finetuned_favours"]]
    assert "matey" in favoured and "paris" in [w for w, *_ in out["words"]["base_favours"]]
    assert out["per_category"]["quiz"]["n"] == 12
    for f in (names.ANALYSIS_FILE, names.ANALYSIS_KL_PNG, names.ANALYSIS_FIRST_PNG):
        assert (tmp_path / f).exists()


def test_favoured_words_are_the_same_in_every_process():
    """Words tied on their ratio come in one order whatever the process's string hashing
    (the findings test the first ones, so a seeded audit is the same audit every time)."""
    import os
    import subprocess
    import sys

    code = ("import json; from finediff.analysis.divergence import favoured_words; from finediff.records import "
            "as_records; from tests.test_analysis import PIRATE, CAPITAL; "
            "print(json.dumps(favoured_words(as_records(PIRATE + CAPITAL), top=8)))")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3")}
    assert len(runs) == 1
    words = json.loads(runs.pop())["finetuned_favours"]
    ties = [(a[0], b[0]) for a, b in zip(words, words[1:]) if a[1] == b[1]]
    assert ties and all(x < y for x, y in ties)  # ties alphabetical
