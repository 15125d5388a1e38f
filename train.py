"""finediff main job: a thin Hydra shell around the core.

    python train.py model.adapter=/path/to/adapter          # an audit: no hint of what changed
    python train.py experiment=sandbagging                   # a run told where to look
    python train.py model.adapter=/path/to/adapter data.categories=[ethics,persona] trainer.max_steps=100

Checks every setting and named file first (bad input fails in seconds, before any model
loads), then runs the job's phases in order:

1. **survey** (an audit: no ``data.categories``): where the answers changed; the soft
   prompt trains on those texts;
2. **fit**: the soft prompt, with Lightning (callbacks save it, the metrics, checkpoints);
3. **evidence**: the steps of ``evidence.steps`` on rank zero, the report last
   (:func:`finediff.pipeline.run`).

Everything lands in ``paths.output_dir``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("FINEDIFF_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from finediff import names, pipeline  # noqa: E402
from finediff.survey import has_survey, read_survey  # noqa: E402
from finediff.errors import (FinediffError, check_number, check_writable, exit_on_user_error, find_cause,  # noqa: E402
                             preflight)
from finediff.io import load_torch, read_json, write_json  # noqa: E402
from finediff.soft_prompt import is_trainable  # noqa: E402
from callbacks.evidence import LoggerSink  # noqa: E402
from callbacks.sweep import register_resolvers  # noqa: E402
from config_schema import check_composes, register_schemas, settings  # noqa: E402
from finediff.records import Organism  # noqa: E402
from finediff.pipeline.settings import run_seed  # noqa: E402

register_resolvers()
register_schemas()

log = logging.getLogger("finediff.train")


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every ``_target_`` entry of a callbacks/loggers group."""
    out = []
    for key, conf in (group or {}).items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.info("Instantiating %s <%s>", key, conf._target_)
            out.append(hydra.utils.instantiate(conf))
    return out


PRECISIONS = ("64", "32", "16", "bf16", "transformer-engine", "transformer-engine-float16", "16-true", "16-mixed",
              "bf16-true", "bf16-mixed", "32-true", "64-true")
"""The ``trainer.precision`` values Lightning accepts."""


def check_trainer(t) -> None:
    """The ``trainer.*`` values Lightning would only reject once fit starts (minutes in,
    after the survey), checked when the config is composed."""
    get = t.get
    check_number("trainer.max_steps", get("max_steps", -1), int, minimum=-1)
    if get("max_steps", -1) == 0:
        raise FinediffError("trainer.max_steps=0 trains nothing, and every step after training would read an "
                            "untrained prompt; give at least 1 step")
    if get("max_epochs") is not None:
        check_number("trainer.max_epochs", get("max_epochs"), int, minimum=-1)
    interval = get("val_check_interval")
    if interval is not None:
        check_number("trainer.val_check_interval", interval, float)
        if interval <= 0 or (isinstance(interval, float) and interval > 1):
            raise FinediffError(f"trainer.val_check_interval must be a whole number of steps >= 1 or a fraction "
                                f"of an epoch in (0, 1], got {interval!r}")
    for key, minimum in (("log_every_n_steps", 1), ("num_sanity_val_steps", -1), ("accumulate_grad_batches", 1)):
        if get(key) is not None:
            check_number(f"trainer.{key}", get(key), int, minimum=minimum)
    if get("check_val_every_n_epoch") is not None:
        check_number("trainer.check_val_every_n_epoch", get("check_val_every_n_epoch"), int, minimum=1)
    if get("gradient_clip_val") is not None:
        check_number("trainer.gradient_clip_val", get("gradient_clip_val"), float, minimum=0)
    if get("precision") is not None and str(get("precision")) not in PRECISIONS:
        raise FinediffError(f"trainer.precision must be one of {', '.join(PRECISIONS)}; got {get('precision')!r}")
    devices = get("devices")
    if devices is not None and not (devices == "auto" or (isinstance(devices, int) and not isinstance(devices, bool)
                                                          and (devices >= 1 or devices == -1))
                                    or OmegaConf.is_list(devices)):
        raise FinediffError(f"trainer.devices must be a count >= 1, -1, 'auto' or a list of indices; got {devices!r}")


def check_run_inputs(cfg: DictConfig) -> None:
    """What can be checked before anything loads: a usable output folder, a checkpoint to
    resume from that loads safely, the trainer's and the objective's settings (the pair
    checks its adapter's files and that there is something to diff)."""
    out = Path(cfg.paths.output_dir)
    if out.exists() and not out.is_dir():
        raise FinediffError(f"paths.output_dir is a file, not a folder: {out}")
    check_writable(out)
    ckpt = cfg.get("ckpt_path")
    if ckpt:
        if not Path(ckpt).is_file():
            raise FinediffError(f"ckpt_path not found: {ckpt}")
        state = load_torch(ckpt, "a Lightning checkpoint of a finediff run")
        if not isinstance(state, dict) or "state_dict" not in state or names.GLOBAL_STEP not in state:
            raise FinediffError(f"ckpt_path {ckpt} is not a Lightning checkpoint of a finediff run "
                                "(it has no state_dict and global_step)")
        weight = next((v for k, v in state["state_dict"].items() if is_trainable(k)), None)
        tokens = (cfg.get("module") or {}).get("num_soft_prompt_tokens")
        if weight is None or (tokens is not None and weight.shape[0] != tokens):
            raise FinediffError(f"ckpt_path {ckpt} does not hold a soft prompt of module.num_soft_prompt_tokens="
                                f"{tokens} (it holds {'none' if weight is None else tuple(weight.shape)})")
    check_trainer(cfg.get("trainer") or {})
    settings(cfg, "module")  # the objective's settings checked, before minutes of loading and surveying


def train(cfg: DictConfig) -> dict[str, float]:
    """Run the main job from a composed config; return the final metrics."""
    started = time.perf_counter()
    check_run_inputs(cfg)
    seed = run_seed(cfg.get("seed"))
    L.seed_everything(seed, workers=True, verbose=False)  # the same seed, for the dataloader workers too

    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule = hydra.utils.instantiate(cfg.data, seed=seed)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))

    evidence, generation = settings(cfg, "evidence"), settings(cfg, "generation")
    organism = Organism.from_config(cfg.get("organism"))
    out = Path(cfg.paths.output_dir)

    log.info("Instantiating model pair <%s>", cfg.model._target_)
    pair = hydra.utils.instantiate(cfg.model, require_finetuned=True)
    datamodule.tokenizer = pair.tokenizer
    log.info("model pair loaded (%.0f s so far)", time.perf_counter() - started)

    # 1. survey: no category given (an audit), so find where the change is, and train there
    if datamodule.audit:
        if evidence.resume and has_survey(out):
            found = read_survey(out)
        else:
            found = pipeline.survey(pair, evidence.survey, evidence.categories, evidence.alpha,
                                    seed, out, resume=evidence.resume)
        datamodule.set_texts(*found.training_texts())
        log.info("survey done (%.0f s so far)", time.perf_counter() - started)

    log.info("Instantiating module <%s>", cfg.module._target_)
    module = hydra.utils.instantiate(cfg.module, pair=pair, seed=seed)
    print(f"finediff: trainable parameters {module.n_trainable:,} | frozen {module.n_frozen:,}", flush=True)

    log.info("Instantiating trainer <%s>", cfg.trainer._target_)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    # 2. fit: the soft prompt (callbacks save it, the metrics and checkpoints)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    if cfg.get("validate_after_fit"):
        trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("soft prompt trained, %d steps (%.0f s so far)", trainer.global_step, time.perf_counter() - started)

    # 3. evidence, ending with the report (evidence.steps; one process: rank zero)
    if getattr(module, "sharded", False) or getattr(trainer.strategy, "zero_stage_3", False):
        if trainer.is_global_zero:  # one process cannot run a sharded model alone
            log.warning("the pair is sharded (trainer=fsdp or deepspeed): the evidence steps are skipped here; run "
                        "them on the saved prompt with: python evaluate.py task=evidence task.run_dir=%s", out)
    elif trainer.is_global_zero:
        pipeline.run(pair, module.soft_prompt().detach(), datamodule.texts(), evidence, module.objective(), generation,
                     out, organism, str(cfg.get("task_name") or ""), LoggerSink(trainer.loggers, trainer.global_step))
    if trainer.is_global_zero and (out / names.METRICS_FILE).is_file():  # the whole run's time beside training's
        write_json(out / names.METRICS_FILE, {**read_json(out / names.METRICS_FILE),
                                              names.RUN_TIME: round(time.perf_counter() - started, 2), "seed": seed})
    return metrics


class Stopped(Exception):
    """SIGTERM arrived: a scheduler's notice before it kills the job, or ``timeout``'s."""


def _raise_stopped(signum, frame) -> None:
    raise Stopped()


def stopped(err: BaseException | None) -> bool:
    """Whether ``err`` is, or was raised while handling, a :class:`Stopped` (Hydra's
    instantiation wraps what a constructor raised)."""
    return find_cause(err, Stopped) is not None


def resume_command(cfg: DictConfig, argv: list[str]) -> str:
    """The command that goes on from where a stopped run was: the same overrides, the
    same output folder, the checkpoint Lightning saved on the way out, and the evidence
    steps' outputs read back instead of recomputed."""
    out = Path(cfg.paths.output_dir)
    ckpt = out / names.CHECKPOINT_DIR / names.INTERRUPTED_CKPT
    if not ckpt.is_file():
        ckpt = out / names.CHECKPOINT_DIR / names.LAST_CKPT
    keep = [a for a in argv if a.partition("=")[0].lstrip("+~") not in ("ckpt_path", "evidence.resume",
                                                                         "paths.output_dir")]
    extra = [f"paths.output_dir={out}", "evidence.resume=true"] + ([f"ckpt_path={ckpt}"] if ckpt.is_file() else [])
    return " ".join(["python train.py", *keep, *extra])


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    # SIGTERM (what SLURM sends before a kill, and what `timeout` sends) stops the run through
    # an exception: Lightning saves checkpoints/interrupted.ckpt and the prompt on the way out,
    # the evidence steps already written stay, and the exit status is not 0.
    signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        metrics = train(cfg)
    except Exception as err:
        if not stopped(err):
            exit_on_user_error(err)
        print(f"finediff: stopped by SIGTERM; what was done is in {cfg.paths.output_dir}. Go on with: "
              f"{resume_command(cfg, sys.argv[1:])}", file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGTERM)
    return metrics.get(names.VAL_DIVERGENCE)


if __name__ == "__main__":
    preflight(sys.argv[1:])
    check_composes("train", sys.argv[1:])
    main()
