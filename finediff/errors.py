"""One exception type for bad input, so command-line shells can print one line and exit."""

import sys
import tempfile
from pathlib import Path


class FinediffError(Exception):
    """A user-facing error: bad input, a missing file, an incompatible model pair.

    The message is one line that names the offending input. Entry points catch it,
    print ``finediff: error: <message>`` and exit with status 2.
    """


def find_cause(exc: BaseException | None, kind: type | tuple) -> BaseException | None:
    """``exc`` or the first exception of type ``kind`` it was raised from or while handling
    (frameworks wrap what they call: Hydra's ``InstantiationException`` keeps the original
    as ``__cause__``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def find_user_error(exc: BaseException | None) -> FinediffError | None:
    """The :class:`FinediffError` behind ``exc``, also when a framework wrapped it."""
    return find_cause(exc, FinediffError)


def exit_on_user_error(err: BaseException) -> None:
    """Entry points' one error path: a user error becomes ``finediff: error: <message>`` on
    stderr and exit status 2; anything else is re-raised with its traceback."""
    user_error = find_user_error(err)
    if user_error is None:
        raise err
    print(f"finediff: error: {user_error}", file=sys.stderr)
    sys.exit(2)


def check_number(name: str, value, kind: type, minimum=None, below=None) -> None:
    """A setting that must be a number of ``kind`` (an ``int`` also passes for ``float``)
    in ``[minimum, below)``; anything else is a one-line error naming the setting."""
    ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
    if not ok or isinstance(value, bool):
        raise FinediffError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if minimum is not None and value < minimum:
        raise FinediffError(f"{name} must be >= {minimum}, got {value!r}")
    if below is not None and value >= below:
        raise FinediffError(f"{name} must be < {below}, got {value!r}")


def check_writable(folder) -> None:
    """``folder`` exists as a writable folder, or can be made: its nearest existing parent
    is a writable folder. Checked before anything is written, so a run never dies at its end."""
    folder = Path(folder).expanduser().absolute()
    parent = folder
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise FinediffError(f"output folder {folder} cannot be made: {parent} is a file")

    try:  # permissions alone do not tell (root, read-only file systems): try, leave nothing
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise FinediffError(f"output folder {folder} is not writable ({parent}: {err.strerror or err})") from None


def preflight(argv: list[str]) -> None:
    """Checks of command-line overrides that must pass before Hydra creates the run folder
    (it would fail with a traceback-like message of its own): ``paths.output_dir`` must
    not name a file, and must be a folder that can be written or made."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") != "paths.output_dir" or not value:
            continue
        try:
            if Path(value).exists() and not Path(value).is_dir():
                raise FinediffError(f"paths.output_dir is a file, not a folder: {value}")
            check_writable(value)
        except FinediffError as err:
            print(f"finediff: error: {err}", file=sys.stderr)
            sys.exit(2)
