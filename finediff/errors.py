"""One exception type for bad input, so command-line shells can print one line and exit."""


class FinediffError(Exception):
    """A user-facing error: bad input, a missing file, an incompatible model pair.

    The message is one line that names the offending input. Entry points catch it,
    print ``finediff: error: <message>`` and exit with status 2.
    """
