"""Build a model organism (thin Hydra shell over :func:`finediff.organisms.build.build`).

    python build_organism.py organism=sandbagging
    python build_organism.py organism=false_fact steps=50 out_dir=/tmp/ff data_dir=/tmp/ff_data

Generates the organism's finetuning data (off-target prompts answered by the base),
trains its LoRA and writes the adapter with its card; verify it with
``python evaluate.py task=verify experiment=NAME``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

os.environ.setdefault("FINEDIFF_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from finediff.errors import FinediffError, exit_on_user_error  # noqa: E402
from callbacks.sweep import register_resolvers  # noqa: E402
from config_schema import register_schemas  # noqa: E402

register_resolvers()
register_schemas()

log = logging.getLogger("finediff.build_organism")


def build_organism(cfg: DictConfig) -> Path:
    from finediff.organisms.build import build
    from finediff.organisms.recipes import RECIPES

    if not cfg.get("organism"):
        raise FinediffError(f"missing organism=NAME; choose one of {', '.join(sorted(RECIPES))}")
    name = cfg.organism.name
    recipe = cfg.organism.get("recipe") or name
    if recipe not in RECIPES:
        raise FinediffError(f"organism {name!r} has no recipe {recipe!r}; known: {', '.join(sorted(RECIPES))}")
    keys = ("steps", "seed", "base", "rank", "learning_rate", "batch_size", "max_new_tokens")
    options = cfg.organism.get("recipe_options")
    options = OmegaConf.to_container(options) if options is not None else {}
    return build(recipe, name=name, recipe_options=options, **{k: cfg[k] for k in keys},
                 out_dir=Path(cfg.out_dir) if cfg.out_dir else None, data_dir=Path(cfg.data_dir) if cfg.data_dir else None)


@hydra.main(version_base="1.3", config_path="configs", config_name="build_organism.yaml")
def main(cfg: DictConfig) -> None:
    try:
        path = build_organism(cfg)
    except Exception as err:
        exit_on_user_error(err)
    print(json.dumps({"adapter": str(path)}))


if __name__ == "__main__":
    main()
