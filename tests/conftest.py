"""Shared fixtures: a tiny real model pair built once per session, and composed configs."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("FINEDIFF_ROOT", str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

HEAVIEST_FIRST = ("test_organism_behaviour.py", "test_bad_input.py", "test_real_pair.py", "test_audit.py",
                  "test_train.py", "test_conditions.py")
"""Test files that take the longest (over a minute each, ``make test --durations``), longest first."""


def pytest_collection_modifyitems(items):
    """The heaviest files run first: ``--dist loadfile`` hands each idle process the next whole
    file in this order, so the long files start at once and the short ones fill in beside them
    (the two processes end together instead of one waiting on a long file handed out last)."""
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


SMALL_EVIDENCE = {"finediff.pipeline.steps.DATASET_MAX_SCORED_TEXTS": 24, "finediff.lens.DEFAULT_STRENGTHS": (1.0, 4.0)}
"""Module constants (``module.NAME``: value) that keep a run's evidence steps to seconds,
beside the settings :func:`tiny_overrides` shrinks."""


@contextmanager
def constants(values: Optional[dict] = None):
    """Module constants (``module.NAME``: value) set while the block runs, as a test's
    ``monkeypatch.setattr`` would, and restored after it."""
    with pytest.MonkeyPatch.context() as mp:
        for target, value in (values or {}).items():
            mp.setattr(target, value)  # raises on a name the module does not have
        yield


def command(script: str, values: Optional[dict] = None) -> list[str]:
    """The command line that runs ``script`` (train.py, evaluate.py, ...) as a user does,
    with module constants (``module.NAME``: value) set first; arguments follow it."""
    path = str(ROOT / script)
    if not values:
        return [sys.executable, path]
    code = "\n".join([
        "import importlib, runpy, sys",
        f"for target, value in {values!r}.items():",
        "    module, _, name = target.rpartition('.')",
        "    module = importlib.import_module(module)",
        "    assert hasattr(module, name), target",
        "    setattr(module, name, value)",
        f"sys.argv[0] = {path!r}",
        f"runpy.run_path({path!r}, run_name='__main__')"])
    return [sys.executable, "-c", code]


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
    (``evidence``: also shrink the end-of-fit hard prompt and dataset callbacks; with
    :data:`SMALL_EVIDENCE` set, as :func:`run_train` does)."""
    small = [
        "evidence.hard_prompts.pez_steps=2", "evidence.hard_prompts.gcg_steps=1",
        "evidence.hard_prompts.n_candidates=4",
        "generation.max_new_tokens=8", "generation.num_generations_per_prompt=2",
        "evidence.lens.max_texts=40", "evidence.lens.max_new_tokens=4",
        "evidence.lens.n_steer_prompts=2", "evidence.compare.max_texts_per_category=6",
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


def run_train(tiny_dirs, out: Path, *extra: str, values: Optional[dict] = None) -> dict:
    """``train.py``'s job on the tiny pair through the real config, into ``out``, with
    :data:`SMALL_EVIDENCE` and ``values`` (``module.NAME``: value) set while it runs."""
    from train import train

    with constants({**SMALL_EVIDENCE, **(values or {})}):
        return train(compose("train", tiny_overrides(tiny_dirs, out) + list(extra)))


def run_eval(tiny_dirs, out: Path, *extra: str, values: Optional[dict] = None) -> dict:
    """An ``evaluate.py`` task on the tiny pair through the real config, into ``out``, with
    ``values`` (``module.NAME``: value) set while it runs."""
    from evaluate import evaluate

    base = [o for o in tiny_overrides(tiny_dirs, out, evidence=False) if not o.startswith(("logger", "trainer"))]
    with constants(values):
        return evaluate(compose("evaluate", base + list(extra)))
