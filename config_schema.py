"""The one schema of the settings groups: finediff's settings dataclasses as Hydra
structured configs.

The dataclasses (:class:`finediff.pipeline.EvidenceSettings` and its step settings,
:class:`finediff.divergent_dataset.GenerationConfig`, :class:`finediff.pipeline.SoftPromptSettings`)
hold the only defaults; the ``data`` and ``model`` groups' schemas are read from the signatures
of what they instantiate (:func:`signature_schema`), whose defaults are then the only ones. Registered
here in Hydra's ConfigStore as ``<group>/schema``, they are the first default of their
group's YAML file, which keeps only presets and overrides::

    # configs/evidence/default.yaml
    defaults:
      - schema
      - _self_

OmegaConf then checks every key and type when the config is composed (an unknown key or
``evidence.hard_prompts.pez_steps=abc`` fails there), :func:`settings` turns the composed
group into its dataclass, and the dataclass's ``__post_init__`` checks the values' ranges.
Every shell calls :func:`register_schemas` before it composes (finediff/ itself never
imports Hydra or OmegaConf).
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import sys
import typing
from dataclasses import MISSING, dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, List, Optional, Union

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from finediff.divergent_dataset import GenerationConfig
from finediff.errors import FinediffError, find_cause
from finediff.pipeline.settings import EvidenceSettings, SoftPromptSettings

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SCHEMA = "schema"
"""The name each schema has in its group: ``defaults: [schema, _self_]``."""


@dataclass
class ModuleSchema(SoftPromptSettings):
    """The ``module`` group: the soft prompt's settings and the LightningModule that takes them."""

    _target_: str = "lightning_modules.SoftPromptDivergence"


def _config_type(hint: Any) -> Any:
    """A type OmegaConf can check in place of a signature's ``hint``: primitives as they are,
    sequences as ``List[...]``, ``Optional`` kept; anything else (a union, an object) ``Any``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        rest = [a for a in args if a is not type(None)]
        inner = _config_type(rest[0]) if len(rest) == 1 else Any
        return Optional[inner] if type(None) in args and inner is not Any else inner
    if hint in (int, float, bool, str):
        return hint
    if hint in (list, tuple) or origin in (list, tuple, collections.abc.Sequence):
        item = _config_type(args[0]) if args else Any
        return List[item]
    return Any


def signature_schema(name: str, target: str, skip: tuple[str, ...] = ()) -> type:
    """A structured config from the signature of ``target`` (``module.name``): its keyword
    arguments with their types and defaults, stated once, in the code, and ``_target_``
    (how Hydra instantiates it)."""
    module, _, attr = target.rpartition(".")
    obj = getattr(importlib.import_module(module), attr)
    fn = obj.__init__ if inspect.isclass(obj) else obj
    scope = {**vars(typing), **vars(inspect.getmodule(fn))}
    specs = [("_target_", str, field(default=target))]
    for p in inspect.signature(fn).parameters.values():
        if p.name in ("self", *skip) or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = p.annotation
        if isinstance(hint, str):
            try:
                hint = eval(hint, scope)  # noqa: S307  (the annotation of our own code)
            except Exception:
                hint = Any
        kind = Any if hint is inspect.Parameter.empty else _config_type(hint)
        if p.default is None and kind is not Any and typing.get_origin(kind) is not Union:
            kind = Optional[kind]
        default = MISSING if p.default is inspect.Parameter.empty else p.default
        specs.append((p.name, kind, field(default=default)))
    return make_dataclass(name, specs)


SCHEMAS: dict[str, type] = {
    "evidence": EvidenceSettings, "generation": GenerationConfig, "module": ModuleSchema,
    "data": signature_schema("DataSchema", "datamodules.CategoryTextDataModule", skip=("tokenizer", "seed")),
    "model": signature_schema("ModelSchema", "finediff.models.load_model_pair", skip=("require_finetuned",)),
}
"""Config group -> the settings dataclass that is its schema."""


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent); call it before composing."""
    store = ConfigStore.instance()
    for group, node in SCHEMAS.items():
        store.store(group=group, name=SCHEMA, node=node)


def _first_line(text: Any) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def omegaconf_error_line(err: OmegaConfBaseException, prefix: str = "") -> str:
    """OmegaConf's error (several lines: the message, full_key, reference_type, ...) as one
    line that starts with the full key: ``evidence.hard_prompts.pez_steps: Value 'abc' of
    type 'str' could not be converted to Integer``."""
    key = ".".join(k for k in (prefix, str(getattr(err, "full_key", None) or "")) if k)
    message = _first_line(getattr(err, "msg", None) or err) or type(err).__name__
    return f"{key}: {message}" if key else message


def _omegaconf_cause(err: BaseException) -> Optional[OmegaConfBaseException]:
    return find_cause(err, OmegaConfBaseException)


def hydra_error_line(err: HydraException) -> str:
    """Hydra's composition errors (several lines, with hints) as one line: a value of the
    wrong type starts with its full key, other errors keep Hydra's first line and the
    first line of their cause."""
    if isinstance(err, OverrideParseException):
        return f"cannot read the override {err.override!r}: {_first_line(err.message)}"
    if isinstance(err, MissingConfigException):
        options = f" (available: {', '.join(o for o in err.options if not o.startswith('_'))})" if err.options else ""
        return _first_line(err) + options
    cause = _omegaconf_cause(err.__cause__) if err.__cause__ is not None else None
    if isinstance(cause, ValidationError) and getattr(cause, "full_key", None):
        return omegaconf_error_line(cause)
    cause = err.__cause__
    return _first_line(err).rstrip(".") + (f": {_first_line(cause)}" if cause is not None else "")


def check_composes(config_name: str, argv: list[str]) -> None:
    """Compose the command's config once before ``@hydra.main`` does: an override that
    OmegaConf rejects (a value of the wrong type, a key the schema does not have) is then
    ``finediff: error: <one line naming the key>`` and exit status 2, not Hydra's report
    of several lines. Whatever else Hydra rejects (a config group option that does not
    exist, a sweep without ``-m``), a multirun's swept values and command lines with
    Hydra's other flags are left to Hydra."""
    multirun = ("-m", "--multirun")
    if any(arg.startswith("-") and arg not in multirun for arg in argv):
        return
    overrides = [arg for arg in argv if arg not in multirun]
    if len(overrides) < len(argv):  # a multirun: its fixed overrides, once
        try:
            parsed = OverridesParser.create().parse_overrides(overrides)
        except HydraException:
            return
        overrides = [o.input_line for o in parsed if not o.is_sweep_override()]
    register_schemas()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            compose(config_name, overrides=overrides)
    except HydraException as err:
        if _omegaconf_cause(err) is None:
            return
        print(f"finediff: error: {hydra_error_line(err)}", file=sys.stderr)
        sys.exit(2)


def settings(cfg: Any, group: str):
    """The config group ``group`` of ``cfg`` as its settings dataclass. A composed config's
    group is typed already (OmegaConf checked it); a plain mapping (the seed API's config)
    or a missing group is merged over the schema's defaults here. An error OmegaConf raises
    is a one-line :class:`FinediffError` naming the key; the dataclass checks the values."""
    schema = SCHEMAS[group]
    node = cfg.get(group) if cfg is not None else None
    typed = isinstance(node, DictConfig) and OmegaConf.get_type(node) is schema
    try:
        if not typed:
            node = OmegaConf.merge(OmegaConf.structured(schema), node if node is not None else {})
        return OmegaConf.to_object(node)
    except OmegaConfBaseException as err:
        raise FinediffError(omegaconf_error_line(err, "" if typed else group)) from None
