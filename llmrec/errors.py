"""Project error and warning classes.

Every input problem raises :class:`DataError` (or a subclass) with the file,
the column and an example of the offending value, so the user can fix it
without reading a traceback.
"""

from __future__ import annotations

from typing import Any


class LlmrecError(Exception):
    """Base class of every error raised by llmrec on purpose."""


class DataError(LlmrecError, ValueError):
    """Bad input data: names the file, the column and an example value."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        column: str | None = None,
        value: Any = None,
        hint: str | None = None,
    ) -> None:
        self.file = file
        self.column = column
        self.value = value
        self.hint = hint
        parts = [message]
        if file is not None:
            parts.append(f"file: {file}")
        if column is not None:
            parts.append(f"column: {column!r}")
        if value is not None:
            parts.append(f"example value: {value!r}")
        if hint:
            parts.append(f"fix: {hint}")
        super().__init__("\n  ".join(parts))


class ConfigError(LlmrecError, ValueError):
    """A parameter with a value outside its allowed range."""

    def __init__(self, message: str, *, parameter: str, value: Any = None) -> None:
        self.parameter = parameter
        self.value = value
        super().__init__(f"{parameter}={value!r}: {message}")


class LlmrecWarning(UserWarning):
    """Soft problems: the run goes on, but the user should know."""
