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
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class SpecError(ValueError):
    """One or more problems in a hypothesis or search-space file."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line or 0, i.field))
        super().__init__("\n".join(str(i) for i in self.issues))
