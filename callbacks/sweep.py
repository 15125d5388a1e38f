"""Hydra's side of a sweep: each job's output folder, and the table at the end.

``${finediff.output_dir:DEFAULT}`` (``configs/paths/default.yaml``) is ``DEFAULT`` for a
single run and the job's own sweep subfolder in a multirun, where parallel jobs would
otherwise share one timestamped folder. :class:`SweepSummary` writes
:func:`finediff.sweep.summarize`'s table when a multirun ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from finediff.sweep import summarize


def output_dir(default: str) -> str:
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return str(HydraConfig.get().runtime.output_dir)
    return default


def run_model(run: Path) -> dict:
    """The ``model`` block a run was launched with (``.hydra/config.yaml``), its interpolations
    resolved where they can be (``{}`` when there is none)."""
    cfg_file = Path(run) / ".hydra" / "config.yaml"
    if not cfg_file.is_file():
        return {}
    cfg = OmegaConf.load(cfg_file)
    out = {}
    for key in ("base", "finetuned", "adapter"):
        try:
            out[key] = OmegaConf.select(cfg, f"model.{key}", throw_on_resolution_failure=True)
        except Exception:  # an interpolation this process cannot resolve (e.g. ${now:...})
            out[key] = None
    return out


def register_resolvers() -> None:
    """Register finediff's config resolvers (idempotent); every shell calls it before Hydra composes."""
    if not OmegaConf.has_resolver("finediff.output_dir"):
        OmegaConf.register_new_resolver("finediff.output_dir", output_dir)


class SweepSummary(Callback):
    """The sweep table (``sweep_summary.md``) at the end of a multirun."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summarize(config.hydra.sweep.dir, run_model)
