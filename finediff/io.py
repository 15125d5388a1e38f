"""Atomic writes and checked reads: a reader never sees a half-written output file, and
a damaged input file is a one-line error naming it.

Files are created with the permissions the user's umask gives any new file (``mkstemp``
alone would make them 0600), so results are as readable as the checkpoints beside them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from finediff.errors import FinediffError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise FinediffError(f"cannot write {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FinediffError(f"cannot write {path}: a parent of it is a file, not a directory") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; on success it replaces ``path``.

    The previous folder is moved aside, the new one renamed into place, and only then is
    the old one deleted: an exception at any point leaves the previous folder intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """Write one JSON object per line, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


_UNESCAPED_BAR = re.compile(r"(?<!\\)\|")
_LINE_BREAK = re.compile(r"\r\n?|\n")


def _markdown_cell(value: Any) -> str:
    """One table cell: ``str(value)`` on one line, every ``|`` escaped (one already written
    as ``\\|`` is left as it is, so escaping twice changes nothing)."""
    return _UNESCAPED_BAR.sub(r"\\|", _LINE_BREAK.sub(" ", str(value)))


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table as lines: the header, the ``|---|`` rule, one line per row. Cells
    are written with ``str`` and escaped (``|`` cannot end a cell early; a line break in a
    cell becomes a space); a row with another number of cells than the header is an error."""
    lines = ["| " + " | ".join(_markdown_cell(h) for h in header) + " |", "|---" * len(header) + "|"]
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"markdown table row {i} has {len(row)} cells, the header {len(header)}: {row!r}")
        lines.append("| " + " | ".join(_markdown_cell(c) for c in row) + " |")
    return lines


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file; a missing or malformed one is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FinediffError(f"file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FinediffError(f"{path}: malformed JSON ({err.msg}, line {err.lineno})") from None


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """``(line number, object)`` for every non-blank line; a malformed line is a
    one-line error naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise FinediffError(f"file not found: {path}")
    rows = []
    # JSON lines end at "\n" only: str.splitlines() would also split inside a string at the
    # U+0085 / U+2028 that json.dumps(ensure_ascii=False) writes as they are
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as err:
            raise FinediffError(f"{path}:{lineno}: malformed JSON ({err.msg})") from None
    return rows


def read_text(path: str | os.PathLike) -> str:
    """A text file's content; a file that is not UTF-8 is a one-line error naming it."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise FinediffError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise FinediffError(f"cannot read {path}: {err.strerror or err}") from None


def load_torch(path: str | os.PathLike, what: str = "a finediff file") -> Any:
    """``torch.load(path, weights_only=True)``; a missing, truncated or foreign file is a
    one-line error naming it and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FinediffError(f"file not found: {path}")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # truncated zip, pickle of another program, random bytes
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Weights only" in str(err):
            # never pass on torch's advice to load it without weights_only: that runs the file's code
            first = "it holds objects other than tensors and plain values, which finediff never unpickles"
        raise FinediffError(f"{path} is not {what} that torch can read safely ({first})") from None
