"""Errors in a user's files, reported as ``FILE:LINE: field.path: message``.

One exception type carries every problem found in a file (not just the first), so a
researcher fixes a broken hypothesis in one go. The CLI prints them and exits 2.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpecIssue:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field, message = _one_line(self.field), _one_line(self.message)
        return f"{where}: {field}: {message}" if field else f"{where}: {message}"


def _one_line(text: str) -> str:
    """Control characters and line separators escaped (a key like "a\nb" must not split
    an issue over two lines of stderr)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class SpecError(ValueError):
    """One or more problems in a hypothesis or search-space file."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line or 0, i.field))
        super().__init__("\n".join(str(i) for i in self.issues))


def clip(value: object, limit: int = 120) -> str:
    """``repr`` of a user's value, shortened: messages must stay one readable line."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 5] + "...'"
