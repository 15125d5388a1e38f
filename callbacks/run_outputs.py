"""Write the run's training outputs: ``soft_prompt.pt`` and ``metrics.json`` (names from
:mod:`finediff.names`), atomically and on global rank zero only.

Both are written when training ends, before the slow evidence steps, and again if
training stops on an exception (Ctrl-C included), marked ``interrupted``: a stopped run
keeps the prompt it had learned.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L

from finediff import names
from finediff.io import torch_save, write_json

log = logging.getLogger(__name__)


class RunOutputs(L.Callback):
    """Saves the prompt when training ends (or stops) and the metrics after each validation.

    Args:
        output_dir: the run's output folder (``paths.output_dir``).
    """

    def __init__(self, output_dir: str):
        self.output_dir = Path(output_dir)
        self._t0 = None
        self._train_s = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, interrupted: bool = False) -> None:
        if not trainer.is_global_zero:
            return
        torch_save(self.output_dir / names.SOFT_PROMPT_FILE, pl_module.prompt_record())
        log.info("soft prompt written to %s", self.output_dir / names.SOFT_PROMPT_FILE)
        self._write_metrics(trainer, interrupted)

    def _write_metrics(self, trainer: L.Trainer, interrupted: bool = False) -> None:
        metrics = {k: float(trainer.callback_metrics[k]) for k in names.VAL_METRIC_KEYS
                   if k in trainer.callback_metrics}
        metrics[names.GLOBAL_STEP] = int(trainer.global_step)
        if self._t0 is not None:
            elapsed = self._train_s if self._train_s is not None else time.perf_counter() - self._t0
            metrics[names.WALL_TIME] = round(elapsed, 2)
        if interrupted:
            metrics[names.INTERRUPTED] = True
        write_json(self.output_dir / names.METRICS_FILE, metrics)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # training time only: the evidence steps and a validation after fit are not training
        self._train_s = time.perf_counter() - self._t0 if self._t0 is not None else None
        self._write(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._train_s is None:  # no training step ran (resumed at max_steps): write them now
            self._train_s = 0.0
            self._write(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # only while training: once it ended, its outputs are written and final
        if trainer.state.fn == "fit" and self._t0 is not None and self._train_s is None:
            self._write(trainer, pl_module, interrupted=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if any(k in trainer.callback_metrics for k in names.VAL_METRIC_KEYS):
            self._write_metrics(trainer)
