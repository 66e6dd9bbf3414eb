"""The one exception type that reaches the user as a single line instead of a traceback."""

from __future__ import annotations


class TexttuneError(Exception):
    """Bad input or configuration: the message names the file, row or column, and the fix."""
