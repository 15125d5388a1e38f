"""One exception type for bad input, so command-line shells can print one line and exit."""


class FinediffError(Exception):
    """A user-facing error: bad input, a missing file, an incompatible model pair.

    The message is one line that names the offending input. Entry points catch it,
    print ``finediff: error: <message>`` and exit with status 2.
    """


def find_user_error(exc: BaseException | None) -> FinediffError | None:
    """The :class:`FinediffError` behind ``exc``, also when a framework wrapped it
    (Hydra's ``InstantiationException`` keeps the original as ``__cause__``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, FinediffError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
