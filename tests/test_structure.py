"""The layering and naming the README promises, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from finediff import names
from tests.conftest import ROOT

SHELL_AND_GLUE = ("lightning", "pytorch_lightning", "hydra", "omegaconf", "callbacks", "lightning_modules",
                  "datamodules", "train", "evaluate", "build_organism", "dashboard", "finediff_api", "streamlit")


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
                        "train.py", "evaluate.py", "build_organism.py", "dashboard.py")


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
