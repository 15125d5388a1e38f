"""Write the run's outputs: ``soft_prompt.pt`` and ``metrics.json`` (names from
:mod:`finediff.names`), atomically and on global rank zero only."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L

from finediff import names
from finediff.io import torch_save, write_json

log = logging.getLogger(__name__)


class RunOutputs(L.Callback):
    """Saves the prompt when fit ends and the validation metrics after each validation.

    Args:
        output_dir: the run's output folder (``paths.output_dir``).
    """

    def __init__(self, output_dir: str):
        self.output_dir = Path(output_dir)
        self._t0 = None
        self._train_s = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # training time only: a validation after fit must not add the evidence callbacks' time
        self._train_s = time.perf_counter() - self._t0 if self._t0 is not None else None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            path = self.output_dir / names.SOFT_PROMPT_FILE
            torch_save(path, pl_module.prompt_record())
            log.info("soft prompt written to %s", path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: float(trainer.callback_metrics[k]) for k in names.VAL_METRIC_KEYS
                   if k in trainer.callback_metrics}
        if not metrics:
            return
        metrics["global_step"] = int(trainer.global_step)
        if self._t0 is not None:
            elapsed = self._train_s if self._train_s is not None else time.perf_counter() - self._t0
            metrics["wall_time_s"] = round(elapsed, 2)
        write_json(self.output_dir / names.METRICS_FILE, metrics)
