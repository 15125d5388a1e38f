"""The evidence steps' output to the run's Lightning loggers (``train.py`` runs the steps
after fit, :func:`finediff.pipeline.run`; this only logs what they hand it)."""

from __future__ import annotations

from pathlib import Path


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
