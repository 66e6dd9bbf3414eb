"""The one exception type that reaches the user as a single line instead of a traceback."""

from __future__ import annotations


class TexttuneError(Exception):
    """Bad input or configuration: the message names the file, row or column, and the fix."""


def first_line(exc: BaseException) -> str:
    """An exception from a library as a short clause for a one-line message: its first line, or its type."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
