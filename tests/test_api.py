"""The seed framework's Python API, run as its Quick start is written (the embedded
SmolLM2 pair with a shipped organism in place of the 7B hub ids)."""

from __future__ import annotations

import json

import pytest
import torch

from finediff import names
from finediff.hard_prompts import search as hp_search
from finediff.pipeline import steps
from tests.conftest import ROOT


@pytest.mark.slow
def test_seed_quick_start_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from finediff_api import DivergenceTrainer, ModelPairManager

    # The hard-prompt search's sizes are constants: small here, so the test takes a minute
    for module, name, value in ((steps, "INIT_TEXTS", 4), (hp_search, "N_STARTS", 2), (steps, "TRAIN_BATCHES", 1),
                                (steps, "EVAL_BATCHES", 1), (steps, "BATCH_SIZE", 2)):
        monkeypatch.setattr(module, name, value)  # where they are looked up

    # Load models
    model_manager = ModelPairManager(device="cpu")
    model_1, model_2, tokenizer = model_manager.load_model_pair(
        "embedded:smollm2", "embedded:smollm2", adapter=str(ROOT / "organisms" / "sandbagging"))
    # A config in the seed's shape, kept small so the test takes a minute
    config = {"output_dir": str(tmp_path / "out"),
              "training": {"num_soft_prompt_tokens": 4, "learning_rate": 0.01, "batch_size": 2, "max_steps": 2},
              "generation": {"max_length": 8, "num_generations_per_prompt": 1},
              "data": {"categories": ["capabilities"], "max_texts_per_category": 12},
              "evidence": {"hard_prompts": {"methods": ["projection", "text"]},
                           "divergent_dataset": {"n_hard_prompts": 1, "n_texts": 2}}}
    monkeypatch.setattr("finediff.pipeline.steps.DATASET_MAX_SCORED_TEXTS", 6)
    monkeypatch.setattr("finediff.pipeline.steps.DATASET_MAX_NEW_TOKENS", 8)
    monkeypatch.setattr("finediff.pipeline.steps.DATASET_TEXTS_PER_HARD_PROMPT", 1)
    # Create trainer
    trainer = DivergenceTrainer(model_1=model_1, model_2=model_2, tokenizer=tokenizer, config=config)
    # Train soft prompts
    metrics = trainer.train()
    assert metrics[names.VAL_DIVERGENCE_NO_PROMPT] > 0
    record = torch.load(tmp_path / "out" / names.SOFT_PROMPT_FILE, weights_only=True)
    assert record["prompt"].shape == (4, 576) and record[names.GLOBAL_STEP] == 2
    # Generate divergent examples
    dataset = trainer.generate_divergent_dataset(output_file="divergent_dataset.pt")
    assert len(dataset) == 3
    assert torch.load(tmp_path / "divergent_dataset.pt", weights_only=True) == dataset
    assert [json.loads(x) for x in (tmp_path / "divergent_dataset.jsonl").read_text().splitlines()] == dataset
    assert set(dataset[0]) == {"prompt", "generation_1", "generation_2", "metrics"}
    kl = [r["metrics"]["kl_divergence"] for r in dataset]
    assert kl == sorted(kl, reverse=True) and kl[0] > 0

    # Analysis tools, by the seed's import paths and arguments
    from finediff_api.analysis import BehavioralClusteringAnalyzer, DivergenceAnalyzer
    from finediff_api.tracking import ExperimentTracker

    analysis = DivergenceAnalyzer(metrics=[names.KL_DIVERGENCE], output_dir=tmp_path / "analysis") \
        .analyze_divergence_patterns(dataset)
    assert analysis["n_records"] == 3 and analysis["metrics"][names.KL_DIVERGENCE]["max"] == kl[0]
    clusters = BehavioralClusteringAnalyzer(output_dir=tmp_path / "analysis", k_range=(2, 2)) \
        .analyze_divergent_behaviors(dataset)
    assert sum(c["size"] for c in clusters["clusters"]) == 3
    tracker = ExperimentTracker(config=config, use_wandb=False, output_dir=str(tmp_path / "track"))
    tracker.log_metrics({"kl": kl[0]}, step=0)
    tracker.finish()
    assert list((tmp_path / "track").rglob("metrics.csv"))


def test_seed_generation_reads_the_seeds_max_length_as_max_new_tokens():
    """The seed's ``generation.max_length`` (new tokens per generation) is finediff's
    ``generation.max_new_tokens``; the finediff key wins when both are given."""
    from finediff_api.trainer import seed_generation

    assert seed_generation({"max_length": 8, "num_generations_per_prompt": 1}).max_new_tokens == 8
    assert seed_generation({"max_new_tokens": 6}).max_new_tokens == 6
    assert seed_generation({"max_length": 8, "max_new_tokens": 6}).max_new_tokens == 6
    assert seed_generation(None).max_new_tokens == 128
