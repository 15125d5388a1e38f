"""ExperimentTracker: the seed's tracking face over Lightning's loggers (wandb offline by
default, or CSV)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from lightning.pytorch.loggers import CSVLogger, WandbLogger


class ExperimentTracker:
    """Log a run's config and metrics.

    Args:
        config: the experiment config (a dict; logged as hyper-parameters).
        use_wandb: log to wandb (offline unless ``WANDB_MODE=online``); otherwise to CSV.
        project_name: the wandb project.
        output_dir: where the logger writes (default: the config's ``output_dir`` or ``outputs``).
    """

    def __init__(self, config: Optional[dict] = None, use_wandb: bool = True, project_name: str = "finediff",
                 output_dir: Optional[str] = None):
        self.config = dict(config or {})
        save_dir = str(Path(output_dir or self.config.get("output_dir") or "outputs"))
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        if use_wandb:
            self.logger = WandbLogger(project=project_name, name=self.config.get("name"), save_dir=save_dir,
                                      mode=os.environ.get("WANDB_MODE", "offline"))
        else:
            self.logger = CSVLogger(save_dir=save_dir, name="csv")
        self.logger.log_hyperparams(self.config)

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        self.logger.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def finish(self) -> None:
        self.logger.finalize("success")
