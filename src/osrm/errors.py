"""User-facing errors.

Anything a user can cause (a bad file, an unknown name, an out-of-range value) raises
:class:`OsrmError` with one line that names the file or field and what was expected. The CLI
prints that line and exits with status 2; programming errors keep their tracebacks.
"""


class OsrmError(ValueError):
    """A usage or input error, reported as one line (CLI exit status 2)."""


def one_line(message: object) -> str:
    """``message`` (an exception or text) with every run of whitespace, newlines included,
    collapsed to one space: what reaches the user is always a single line."""
    return " ".join(str(message).split())
