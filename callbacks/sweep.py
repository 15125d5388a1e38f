"""Hydra's side of a sweep: each job's output folder, and the table at the end.

``${finediff.output_dir:DEFAULT}`` (``configs/paths/default.yaml``) is ``DEFAULT`` for a
single run and the job's own sweep subfolder in a multirun, where parallel jobs would
otherwise share one timestamped folder. :class:`SweepSummary` writes
:func:`finediff.sweep.summarize`'s table when a multirun ends.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


def output_dir(default: str) -> str:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return str(HydraConfig.get().runtime.output_dir)
    return default


def register_resolvers() -> None:
    """Register finediff's config resolvers (idempotent); every shell calls it before Hydra composes."""
    if not OmegaConf.has_resolver("finediff.output_dir"):
        OmegaConf.register_new_resolver("finediff.output_dir", output_dir)


class SweepSummary(Callback):
    """The sweep table (``sweep_summary.md``) at the end of a multirun."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from finediff.sweep import summarize

        summarize(config.hydra.sweep.dir)
