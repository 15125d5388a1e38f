"""finediff main job: a thin Hydra shell around the core.

    python train.py model.adapter=/path/to/adapter          # an audit: no hint of what changed
    python train.py experiment=sandbagging                   # a run told where to look
    python train.py model.adapter=/path/to/adapter data.categories=[ethics,persona] trainer.max_steps=100

Instantiates, in order, the datamodule, callbacks and loggers (each checks its settings,
so bad input fails before any model loads), the model pair, then (an audit: no
``data.categories``) runs the survey that picks the texts where the change is, then the
LightningModule and the trainer from ``configs/``; fits (the evidence callback runs the evidence pipeline when
fit ends), validates once more, and returns the metrics. Everything lands in
``paths.output_dir``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("FINEDIFF_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from finediff import names, pipeline  # noqa: E402
from finediff.survey import has_survey, read_survey  # noqa: E402
from finediff.answers import AnswerSettings, check_positions  # noqa: E402
from finediff.divergence import parse_kind  # noqa: E402
from finediff.errors import FinediffError, check_number, exit_on_user_error, preflight  # noqa: E402
from callbacks.sweep import register_resolvers  # noqa: E402

register_resolvers()

log = logging.getLogger("finediff.train")


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every ``_target_`` entry of a callbacks/loggers group."""
    out = []
    for key, conf in (group or {}).items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.info("Instantiating %s <%s>", key, conf._target_)
            out.append(hydra.utils.instantiate(conf))
    return out


def check_run_inputs(cfg: DictConfig) -> None:
    """What can be checked before anything loads: a usable output folder, an existing
    checkpoint to resume from and the objective's settings (the pair checks that there is
    something to diff)."""
    out = Path(cfg.paths.output_dir)
    if out.exists() and not out.is_dir():
        raise FinediffError(f"paths.output_dir is a file, not a folder: {out}")
    ckpt = cfg.get("ckpt_path")
    if ckpt and not Path(ckpt).is_file():
        raise FinediffError(f"ckpt_path not found: {ckpt}")
    m = cfg.get("module") or {}  # the objective's settings, before minutes of loading and surveying
    parse_kind(m.get("divergence", "kl_ft_base"))
    check_positions(m.get("positions", "response"))
    for key, kind in (("answer_tokens", int), ("refresh_every", int), ("answer_temperature", float),
                      ("readability_weight", float), ("answer_batch_size", int), ("base_anchor", float)):
        if key in m:
            check_number(f"module.{key}", m[key], kind)
    if not isinstance(m.get("project", False), bool):
        raise FinediffError(f"module.project must be true or false, got {m.get('project')!r}")
    AnswerSettings(m.get("answer_tokens", 16), m.get("refresh_every", 24), m.get("answer_temperature", 0.0),
                   batch_size=m.get("answer_batch_size", 0))


def train(cfg: DictConfig) -> dict[str, float]:
    """Run the main job from a composed config; return the final metrics."""
    check_run_inputs(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule = hydra.utils.instantiate(cfg.data)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))

    evidence = pipeline.EvidenceSettings.from_mapping(cfg.get("evidence"))

    log.info("Instantiating model pair <%s>", cfg.model._target_)
    pair = hydra.utils.instantiate(cfg.model)
    datamodule.tokenizer = pair.tokenizer
    if datamodule.audit:
        # No category given: find where the change is first, and train where it is.
        out = Path(cfg.paths.output_dir)
        if evidence.resume and has_survey(out):
            found = read_survey(out)
        else:
            found = pipeline.survey(pair, evidence.survey, int(cfg.get("seed") or 0), out)
        datamodule.set_texts(*found.training_texts(evidence.survey.n_train, evidence.survey.n_val))

    log.info("Instantiating module <%s>", cfg.module._target_)
    module = hydra.utils.instantiate(cfg.module, pair=pair)
    print(f"finediff: trainable parameters {module.n_trainable:,} | frozen {module.n_frozen:,}", flush=True)

    log.info("Instantiating trainer <%s>", cfg.trainer._target_)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if cfg.get("validate_after_fit"):
        trainer.validate(module, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except Exception as err:
        exit_on_user_error(err)
    return metrics.get(names.VAL_DIVERGENCE)


if __name__ == "__main__":
    preflight(sys.argv[1:])
    main()
