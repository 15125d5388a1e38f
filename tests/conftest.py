"""Shared fixtures: a tiny real model pair built once per session, and composed configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("FINEDIFF_ROOT", str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """``base``, ``finetuned`` (a briefly trained copy) and ``adapter`` (LoRA) directories."""
    from finediff.tiny import build_tiny_pair

    return build_tiny_pair(tmp_path_factory.mktemp("tiny_pair"))


@pytest.fixture(scope="session")
def tiny_pair(tiny_dirs):
    from finediff.models import load_model_pair

    return load_model_pair(str(tiny_dirs["base"]), str(tiny_dirs["finetuned"]))


@pytest.fixture(scope="session")
def finished_run(tiny_dirs, tmp_path_factory) -> Path:
    """One finished ``train.py`` run on the tiny pair with every evidence step, shared by
    every test that reads a run (``<root>/sandbagging/run1``, as the dashboard finds runs).
    Read it, never change it: a test that must change a run copies it first."""
    out = tmp_path_factory.mktemp("outputs") / "sandbagging" / "run1"
    run_train(tiny_dirs, out, "experiment=sandbagging", "model.adapter=null", f"model.base={tiny_dirs['base']}",
              f"model.finetuned={tiny_dirs['finetuned']}")
    return out


def tiny_overrides(tiny_dirs, output_dir: Path, evidence: bool = True) -> list[str]:
    """Overrides that point the main config at the tiny pair and keep a run to seconds
    (``evidence``: also shrink the end-of-fit hard prompt and dataset callbacks)."""
    small = [
        "evidence.hard_prompts.pez_steps=2", "evidence.hard_prompts.gcg_steps=1",
        "evidence.hard_prompts.n_candidates=4", "evidence.divergent_dataset.max_scored_texts=24",
        "generation.max_new_tokens=8", "generation.num_generations_per_prompt=2",
        "evidence.lens.max_texts=40", "evidence.lens.max_new_tokens=4",
        "evidence.lens.n_steer_prompts=2", "evidence.lens.strengths=[1.0,4.0]",
        "evidence.compare.max_texts_per_category=6",
    ] if evidence else []
    return small + [
        f"model.base={tiny_dirs['base']}",
        f"model.finetuned={tiny_dirs['finetuned']}",
        "model.adapter=null",
        f"paths.output_dir={output_dir}",
        "logger=csv",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "data.max_texts_per_category=40",
        "data.categories=[sandbagging]",
    ]


def compose(config_name: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from callbacks.sweep import register_resolvers
    from config_schema import register_schemas

    register_resolvers()
    register_schemas()

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


def run_train(tiny_dirs, out: Path, *extra: str) -> dict:
    """``train.py``'s job on the tiny pair through the real config, into ``out``."""
    from train import train

    return train(compose("train", tiny_overrides(tiny_dirs, out) + list(extra)))


def run_eval(tiny_dirs, out: Path, *extra: str) -> dict:
    """An ``evaluate.py`` task on the tiny pair through the real config, into ``out``."""
    from evaluate import evaluate

    base = [o for o in tiny_overrides(tiny_dirs, out, evidence=False) if not o.startswith(("logger", "trainer"))]
    return evaluate(compose("evaluate", base + list(extra)))
