"""The layering and naming the README promises, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from finediff import names
from tests.conftest import ROOT

SHELL_AND_GLUE = ("lightning", "pytorch_lightning", "hydra", "omegaconf", "callbacks", "lightning_modules",
                  "datamodules", "train", "evaluate", "build_organism", "plan", "dashboard", "finediff_api",
                  "streamlit", "config_schema")


def _sources(*roots: str) -> list[Path]:
    out = []
    for root in roots:
        path = ROOT / root
        out += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return out


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("path", _sources("finediff"), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_neither_lightning_nor_the_shells(path):
    """finediff/ is plain PyTorch + transformers: it imports no Lightning, no Hydra and
    nothing of the project outside itself (every import, also those inside functions)."""
    bad = _imports(path) & set(SHELL_AND_GLUE)
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def _name_values() -> dict[str, str]:
    """The file names, metric keys and record keys defined in finediff/names.py."""
    return {k: v for k, v in vars(names).items()
            if k.isupper() and isinstance(v, str) and ("." in v or "/" in v or "_" in v)}


EVERY_MODULE = _sources("finediff", "callbacks", "lightning_modules", "datamodules", "finediff_api", "benchmarks",
                        "train.py", "evaluate.py", "build_organism.py", "plan.py", "dashboard.py", "config_schema.py")


@pytest.mark.parametrize("path", [p for p in EVERY_MODULE if p.name != "names.py"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_names_are_defined_once(path):
    """No module spells a name of finediff/names.py as a string literal, and no module
    builds an activation name by hand: producers and consumers import them."""
    values = _name_values()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            hits = [k for k, v in values.items() if node.value == v]
            assert not hits, f"{path.relative_to(ROOT)}:{node.lineno} spells names.{hits[0]} ({node.value!r})"
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
            assert ".layer" not in text, f"{path.relative_to(ROOT)}:{node.lineno} builds an activation name"


def test_the_guard_sees_a_copy(tmp_path):
    """The guard above would catch a module that spells a name itself."""
    values = _name_values()
    src = f'path = out / "{names.METRICS_FILE}"\nkey = "{names.VAL_DIVERGENCE}"\n'
    literals = [n.value for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Constant)]
    assert {names.METRICS_FILE, names.VAL_DIVERGENCE} <= {v for v in literals if v in values.values()}


# One name per thing: new tokens per generated answer are ``max_new_tokens`` in every
# config block and settings class; ``max_length`` is the input tokens per text (data.*).
# Spelled in parts so a grep for the retired names finds only the old-record read.
RETIRED_TOKEN_NAMES = tuple(f"{w}_tokens" for w in ("answer", "response", "steering"))


def _package(path: Path, text: str) -> tuple[str, ...]:
    """Where a config file's keys land in the composed config (its ``@package``)."""
    if "# @package _global_" in text:
        return ()
    parts = path.relative_to(ROOT / "configs").parent.parts
    return tuple(parts)


def _config_keys(node, prefix: tuple[str, ...]):
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (str(key),)
            yield from _config_keys(value, prefix + (str(key),))
    elif isinstance(node, list):
        for value in node:
            yield from _config_keys(value, prefix)


def _bad_config_keys(path: Path, text: str) -> list[str]:
    import yaml

    bad = []
    for key in _config_keys(yaml.safe_load(text), _package(path, text)):
        if key[-1] in RETIRED_TOKEN_NAMES or (key[-1] == "max_length" and key != ("data", "max_length")):
            bad.append(".".join(key))
    return bad


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_config_keys_say_max_new_tokens(path):
    """No config names new tokens per answer anything but ``max_new_tokens``, and
    ``max_length`` (input tokens per text) is a key of the data group only."""
    bad = _bad_config_keys(path, path.read_text())
    assert not bad, f"{path.relative_to(ROOT)} uses {bad} (new tokens per answer: max_new_tokens)"


def _settings_names(source: str, constructors: bool):
    """(class, field) of every dataclass in ``source``, and with ``constructors`` (a
    Lightning module or data module file) (class, argument) of every ``__init__``."""
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        if any("dataclass" in ast.unparse(d) for d in node.decorator_list):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    yield node.name, stmt.target.id
        if constructors:
            for stmt in node.body:
                if isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__":
                    for arg in stmt.args.args + stmt.args.kwonlyargs:
                        yield node.name, arg.arg


# max_length fields that are the data's input tokens per text (``data.max_length``).
INPUT_LENGTH_OWNERS = {"RunTexts", "CategoryTextDataModule"}


@pytest.mark.parametrize("path", EVERY_MODULE, ids=lambda p: str(p.relative_to(ROOT)))
def test_settings_fields_say_max_new_tokens(path):
    """No settings class field or module argument uses a retired name for new tokens."""
    constructors = path.parent.name in ("lightning_modules", "datamodules")
    bad = [f"{cls}.{name}" for cls, name in _settings_names(path.read_text(), constructors)
           if name in RETIRED_TOKEN_NAMES or (name == "max_length" and cls not in INPUT_LENGTH_OWNERS)]
    assert not bad, f"{path.relative_to(ROOT)}: {bad} (new tokens per answer: max_new_tokens)"


def test_the_token_name_guards_see_a_copy():
    """The guards above would catch a retired name in a config or a settings class."""
    configs = ROOT / "configs"
    old = RETIRED_TOKEN_NAMES[1]
    assert _bad_config_keys(configs / "evidence" / "default.yaml", f"survey:\n  {old}: 32\n") == [
        f"evidence.survey.{old}"]
    assert _bad_config_keys(configs / "generation" / "default.yaml", "max_length: 128\n") == ["generation.max_length"]
    assert _bad_config_keys(configs / "data" / "default.yaml", "max_length: 64\n") == []
    assert _bad_config_keys(configs / "experiment" / "x.yaml", "# @package _global_\ndata:\n  max_length: 64\n") == []
    src = f"@dataclass\nclass S:\n    {old}: int = 32\n\nclass M:\n    def __init__(self, max_length=8):\n        pass\n"
    assert list(_settings_names(src, constructors=True)) == [("S", old), ("M", "self"), ("M", "max_length")]


# import name -> distribution, for packages not installed here (installed ones are looked up)
DISTRIBUTION_OF = {"yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow", "huggingface_hub": "huggingface-hub"}
PROJECT = {"finediff", "callbacks", "lightning_modules", "datamodules", "finediff_api", "benchmarks", "tests", "train",
           "evaluate", "build_organism", "plan", "dashboard", "config_schema"}


def _requirements(text: str) -> set[str]:
    import re

    return {re.split(r"[<>=!~\[; ]", line.strip())[0].lower().replace("_", "-")
            for line in text.splitlines() if line.strip()}


def test_every_imported_package_is_declared():
    """Every third-party package the code imports is in setup.cfg: install_requires for the
    code, install_requires or the test extra for the tests."""
    import configparser
    import sys
    from importlib.metadata import packages_distributions

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    runtime = _requirements(cfg["options"]["install_requires"])
    test = runtime | _requirements(cfg["options.extras_require"]["test"])
    installed = packages_distributions()
    missing = []
    for sources, declared in [(EVERY_MODULE, runtime), (_sources("tests"), test)]:
        for path in sources:
            for top in _imports(path) - PROJECT - set(sys.stdlib_module_names) - {"__future__"}:
                dists = {d.lower().replace("_", "-") for d in installed.get(top, [])} \
                    or {DISTRIBUTION_OF.get(top, top).lower().replace("_", "-")}
                if not dists & declared:
                    missing.append(f"{path.relative_to(ROOT)}: {top} ({', '.join(sorted(dists))})")
    assert not missing, "not declared in setup.cfg: " + "; ".join(sorted(missing))


# --------------------------------------------------------------------------- one schema
# The settings dataclasses are the schema of their config groups (config_schema.py registers
# them with Hydra): every default is stated there once, and the group's YAML files hold
# presets and overrides only.


def _schema_groups() -> dict:
    from config_schema import SCHEMAS

    return SCHEMAS


def _schema_yaml_files() -> list[Path]:
    return [p for group in sorted(_schema_groups()) for p in sorted((ROOT / "configs" / group).glob("*.yaml"))]


def _restated_defaults(node, schema, where: str) -> tuple[list[str], list[str]]:
    """(keys of ``node`` the schema does not have, keys that state the schema's own default)."""
    from dataclasses import MISSING, fields, is_dataclass

    known = {f.name: f for f in fields(schema)}
    unknown, twice = [], []
    for key, value in (node or {}).items():
        if key == "defaults" and where.count(".") == 0:
            continue
        f = known.get(key)
        if f is None:
            unknown.append(f"{where}.{key}")
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        if is_dataclass(default):
            if isinstance(value, dict):
                u, t = _restated_defaults(value, type(default), f"{where}.{key}")
                unknown, twice = unknown + u, twice + t
            continue
        default = list(default) if isinstance(default, tuple) else default
        if value == default and isinstance(value, bool) == isinstance(default, bool):  # 2 restates 2.0, not True
            twice.append(f"{where}.{key}")
    return unknown, twice


@pytest.mark.parametrize("path", _schema_yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_default_is_stated_once(path):
    """A schema group's YAML file extends the schema and states only keys the schema has, each
    with a value other than the schema's default (a default stated twice drifts apart)."""
    import yaml

    group = path.parent.name
    node = yaml.safe_load(path.read_text()) or {}
    # the group's base file (default.yaml, or the model group's smollm2.yaml) starts from the schema; a
    # preset starts from its group's base file (which does)
    base = {"model": "smollm2"}.get(group, "default")
    root = "schema" if path.stem == base else base
    assert root in (node.get("defaults") or []), f"{path.relative_to(ROOT)}: defaults must start from the {root}"
    unknown, twice = _restated_defaults(node, _schema_groups()[group], group)
    assert not unknown, f"{path.relative_to(ROOT)}: keys the schema does not have: {unknown}"
    assert not twice, f"{path.relative_to(ROOT)}: states the schema's default again: {twice} (drop them from the YAML)"


def test_the_default_guard_sees_a_copy():
    """The guard above would catch a restated default, also a nested one, and an unknown key."""
    from finediff.pipeline import EvidenceSettings

    node = {"defaults": ["schema"], "resume": False, "steps": ["hard_prompts"],
            "hard_prompts": {"pez_steps": 20, "gcg_steps": 5,
                             "methods": ["projection", "guided", "pez", "text", "gcg"]},
            "lens": {"max_texts": 1000.0, "nope": 1}}
    unknown, twice = _restated_defaults(node, EvidenceSettings, "evidence")
    assert unknown == ["evidence.lens.nope"]
    assert twice == ["evidence.resume", "evidence.hard_prompts.pez_steps", "evidence.hard_prompts.methods",
                     "evidence.lens.max_texts"]
    assert _restated_defaults({"resume": 0, "lens": {"generic": "${paths.data_dir}/g.jsonl"}}, EvidenceSettings,
                              "evidence") == ([], [])


MAX_SETTINGS = 56
"""The settings a user can set in the schema groups today; the guard below keeps it from creeping up."""


def _setting_keys(schema, where: str) -> list[str]:
    from dataclasses import MISSING, fields, is_dataclass

    keys = []
    for f in fields(schema):
        if f.name.startswith("_"):
            continue
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
        keys += _setting_keys(type(default), f"{where}.{f.name}") if is_dataclass(default) else [f"{where}.{f.name}"]
    return keys


def test_the_schema_stays_small():
    """Every setting is one more thing a user reads and a combination nobody measured. A research
    option is a preset over the settings there are (configs/experiment/, configs/evidence/,
    configs/module/) or a named constant in the module that uses it, not one more setting."""
    keys = [k for group, schema in _schema_groups().items() for k in _setting_keys(schema, group)]
    assert len(keys) == len(set(keys))
    assert len(keys) <= MAX_SETTINGS, (f"{len(keys)} settings in the schema (at most {MAX_SETTINGS}): make the new "
                                       "one a preset or a constant")
    assert "evidence.hard_prompts.methods" in keys and "module.positions" in keys  # it reads nested groups
