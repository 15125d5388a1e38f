"""The real embedded SmolLM2-135M-Instruct pair (slow: loads 2 x 134.5M parameters)."""

from __future__ import annotations

import json

import pytest
import torch

from finediff import names
from tests.conftest import compose

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory):
    """A LoRA adapter on the real base, made here: random non-zero up-projections so the
    finetuned side really differs."""
    from peft import LoraConfig, get_peft_model

    from finediff.models import load_model

    base = load_model("embedded:smollm2")
    assert base.config.num_hidden_layers == 30 and base.config.hidden_size == 576
    assert sum(p.numel() for p in base.parameters()) == 134_515_008
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    out = tmp_path_factory.mktemp("lora")
    peft_model.save_pretrained(out)
    return out


def test_real_pair_trains_a_prompt(lora_adapter, tmp_path):
    from train import train

    cfg = compose("train", [
        f"model.adapter={lora_adapter}", f"paths.output_dir={tmp_path}", "logger=csv",
        "trainer.max_steps=3", "trainer.val_check_interval=3", "data.batch_size=2",
        "data.max_texts_per_category=20", "data.max_length=48",
        # every evidence callback runs on the real pair, at a size that keeps the test short
        "callbacks.hard_prompts.pez_steps=2", "callbacks.hard_prompts.gcg_steps=1",
        "callbacks.hard_prompts.n_candidates=2", "callbacks.hard_prompts.train_batches=1",
        "callbacks.hard_prompts.eval_batches=1", "generation.num_generations_per_prompt=2",
        "generation.max_length=12", "callbacks.divergent_dataset.n_texts=2",
        "callbacks.divergent_dataset.texts_per_hard_prompt=1", "callbacks.divergent_dataset.n_hard_prompts=1",
        "callbacks.divergent_dataset.max_scored_texts=16", "callbacks.activation_lens.max_texts=24",
        "callbacks.activation_lens.n_steer_prompts=2", "callbacks.activation_lens.steering_tokens=12",
        "callbacks.activation_lens.strengths=[1.0,4.0]", "callbacks.report.max_texts_per_category=3",
        "callbacks.report.response_tokens=8",
    ])
    metrics = train(cfg)
    assert metrics[names.VAL_DIVERGENCE_NO_PROMPT] > 0
    record = torch.load(tmp_path / names.SOFT_PROMPT_FILE, weights_only=True)
    assert record["prompt"].shape == (8, 576) and torch.isfinite(record["prompt"]).all()
    assert record["pair"]["adapter"] == str(lora_adapter)
    saved = json.loads((tmp_path / names.METRICS_FILE).read_text())
    assert saved["global_step"] == 3
    for name in (names.HARD_PROMPTS_FILE, names.DIVERGENT_DATASET_PT, names.COMPARISON_CSV, names.REPORT_MD,
                 names.REPORT_HTML):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / names.LENS_DIR / names.LENS_SUMMARY).exists()


ORGANISMS = ["sandbagging", "unlearning", "persona", "false_fact"]


@pytest.mark.parametrize("organism", ORGANISMS)
def test_shipped_organism_shows_its_behaviour(organism):
    """Each shipped adapter on the real base shows its behaviour on held-out prompts, more
    than the base does."""
    from finediff.data import REPO_ROOT
    from finediff.generation import generate_mixed
    from finediff.models import load_model_pair
    from finediff.organisms.checkers import CHECKERS
    from finediff.organisms.verify import read_heldout

    adapter = REPO_ROOT / "organisms" / organism
    card = json.loads((adapter / "card.json").read_text())
    assert card["name"] == organism and card["description_short"] and card["target_category"]
    assert sum(f.stat().st_size for f in adapter.iterdir()) < 8_000_000  # a few MB at most
    rows = [r for r in read_heldout(organism) if r["split"] == "target"][:6]
    pair = load_model_pair(adapter=str(adapter))
    checker = CHECKERS[card["checker"]]
    hits = {}
    for side in ("base", "finetuned"):
        gens = generate_mixed(getattr(pair, side), pair.tokenizer, [r["prompt"] for r in rows],
                              [r.get("chat", True) for r in rows], max_new_tokens=32, progress=False)
        hits[side] = sum(checker(g, r) for g, r in zip(gens, rows))
    assert hits["finetuned"] >= 4 and hits["finetuned"] > hits["base"], hits
