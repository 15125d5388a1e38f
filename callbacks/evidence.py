"""The evidence pipeline at the end of fit: one line over :func:`finediff.pipeline.run`.

The steps, their order and what each hands the next live in :mod:`finediff.pipeline`;
this callback only gathers the trained prompt, the run's texts and the loggers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import lightning as L

from finediff import pipeline
from finediff.divergent_dataset import GenerationConfig
from finediff.records import Organism

log = logging.getLogger("finediff.evidence")


class LoggerSink:
    """A :class:`finediff.pipeline.Sink` over Lightning loggers: tables and images where
    the logger has them (wandb), metrics everywhere, the report as a wandb artifact."""

    def __init__(self, loggers: list, step: int = 0):
        self.loggers, self.step = loggers, step

    def table(self, key, columns, rows):
        for lg in self.loggers:
            if hasattr(lg, "log_table"):
                lg.log_table(key, columns=columns, data=rows)

    def metrics(self, values):
        for lg in self.loggers:
            lg.log_metrics(values, step=self.step)

    def images(self, key, paths):
        paths = [str(p) for p in paths if Path(p).exists()]
        for lg in self.loggers:
            if paths and hasattr(lg, "log_image"):
                lg.log_image(key, images=paths, caption=[Path(p).name for p in paths])

    def files(self, key, paths):
        for lg in self.loggers:
            experiment = getattr(lg, "experiment", None)
            if experiment is not None and hasattr(experiment, "log_artifact"):
                import wandb

                artifact = wandb.Artifact(key, type=key)
                for p in paths:
                    artifact.add_file(str(p))
                experiment.log_artifact(artifact)


class EvidenceCallback(L.Callback):
    """Run the evidence steps (hard prompts, divergent dataset, ADL, comparison, analysis,
    report) on rank zero when fit ends.

    Args:
        output_dir: the run's output folder.
        settings: the ``evidence`` config block (see :class:`finediff.pipeline.EvidenceSettings`).
        generation: the ``generation`` config block.
        organism: the ``organism`` config (relevance, steering behaviour, report checker) or None.
        title: the report's title.

    The settings are checked here, when the callback is built, before any model loads.
    """

    def __init__(self, output_dir: str, settings: Optional[dict] = None, generation: Optional[dict] = None,
                 organism: Optional[dict] = None, title: str = ""):
        self.output_dir = Path(output_dir)
        self.settings = pipeline.EvidenceSettings.from_mapping(settings)
        self.generation = GenerationConfig(**dict(generation or {}))
        self.organism = Organism.from_config(organism)
        self.title = title

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # one process cannot run a sharded model alone (FSDP blocks, or ZeRO-3's partitioned weights)
        if getattr(pl_module, "sharded", False) or getattr(trainer.strategy, "zero_stage_3", False):
            if trainer.is_global_zero:
                log.warning("the pair is sharded (trainer=fsdp or deepspeed): the evidence steps are skipped here; run them "
                            "on the saved prompt with: python evaluate.py task=evidence task.run_dir=%s",
                            self.output_dir)
            return
        if trainer.is_global_zero:
            pipeline.run(pl_module.pair, pl_module.soft_prompt().detach(), trainer.datamodule.texts(), self.settings,
                         pl_module.objective(), self.generation, self.output_dir, self.organism, self.title,
                         LoggerSink(trainer.loggers, trainer.global_step))
