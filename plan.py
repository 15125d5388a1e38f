"""The memory planner's command line: which way of placing the pair fits on how many GPUs
of which size, decided before any weights load (the planning itself: ``finediff/plan.py``).

    python plan.py model.base=meta-llama/Llama-3.3-70B-Instruct model.adapter=DIR model.dtype=bfloat16
    python plan.py experiment=sandbagging plan.gpus=[24,80]
    python plan.py model.base=embedded:smollm2 plan.json=true

The arguments are Hydra overrides of ``train.py``'s own config, composed with Hydra's
compose API together with the planner's settings (``configs/plan/default.yaml``,
``plan.*``): whatever picks the pair for a run (``experiment=``, ``model=``, ``model.*``)
picks it here, and the plan is for the pair that run would load. Nothing is written.
A bad override is one line: ``finediff: error: ...``, exit status 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("FINEDIFF_ROOT", str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.errors import HydraException  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from config_schema import hydra_error_line, omegaconf_error_line, register_schemas  # noqa: E402
from finediff.errors import FinediffError, check_number, exit_on_user_error  # noqa: E402
from finediff.plan import format_plan, plan  # noqa: E402


def compose_config(argv: list[str]) -> DictConfig:
    """``train``'s config with the planner's settings, under the command-line overrides."""
    register_schemas()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            return compose("train", overrides=["+plan=default", *argv])
    except HydraException as err:
        raise FinediffError(hydra_error_line(err)) from None


def settings(cfg: DictConfig) -> tuple[dict, dict]:
    """The model and plan settings, resolved and checked (one-line errors naming the key)."""
    try:
        m = OmegaConf.to_container(cfg.model, resolve=True)
        p = OmegaConf.to_container(cfg.plan, resolve=True)
    except OmegaConfBaseException as err:
        raise FinediffError(omegaconf_error_line(err)) from None
    if not m.get("base") or not isinstance(m["base"], str):
        raise FinediffError(f"model.base must name the base model, got {m.get('base')!r}")
    if not isinstance(p["json"], bool):  # the model group's types the schema checked when composing
        raise FinediffError(f"plan.json must be true or false, got {p['json']!r}")
    check_number("plan.max_gpus", p["max_gpus"], int, minimum=1)
    check_number("plan.reserve_gib", p["reserve_gib"], float, minimum=0)
    check_number("plan.overhead", p["overhead"], float, minimum=0)
    if not isinstance(p["gpus"], list):
        p["gpus"] = [p["gpus"]]
    return m, p


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        m, p = settings(compose_config(argv))
        result = plan(m["base"], m["adapter"], str(m["dtype"]), m["merge_adapter"], m["finetuned"],
                      tuple(p["gpus"]), p["max_gpus"], float(p["reserve_gib"]), float(p["overhead"]),
                      m["trust_remote_code"])
    except Exception as err:
        exit_on_user_error(err)
    print(json.dumps(result, indent=2) if p["json"] else format_plan(result))


if __name__ == "__main__":
    main()
