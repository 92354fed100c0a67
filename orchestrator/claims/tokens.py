"""Tokens of the claim language (see ``orchestrator.claims.claim`` for the grammar).

Kept apart from the parser so each stays small; nothing here is public except through
``orchestrator.claims``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class ClaimSyntaxError(ValueError):
    """A claim that does not parse; ``column`` is 1-based into the claim's text."""

    def __init__(self, message: str, column: int):
        super().__init__(message, column)
        self.message = message
        self.column = column

    def __str__(self) -> str:
        return f"column {self.column}: {self.message}"

    def caret(self, text: str) -> str:
        """The claim and a ``^`` under the offending column, for terminal output."""
        return f"{text}\n{' ' * (self.column - 1)}^"


@dataclass(frozen=True)
class Token:
    kind: str  # NUM REF IDENT CMP ( ) [ ] , + - * / END
    text: str
    start: int  # 0-based index into the claim text
    value: float = 0.0

    @property
    def column(self) -> int:
        return self.start + 1

    def describe(self) -> str:
        return "the end of the claim" if self.kind == "END" else f"'{self.text}'"


_NUMBER = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COMPARISONS = ("<=", ">=", "==", "!=", "=<", "=>", "<>", "<", ">", "=", "≤", "≥")
_SINGLE = frozenset("()[],+-*/")
_UNICODE_MINUS = frozenset("\u2212\u2013")  # what word processors turn '-' into
_DIGITS = frozenset("0123456789")


def tokenize(text: str) -> list[Token]:
    """Split a claim into tokens; ``arm.metric`` is one token, ``25%`` one number."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch in _DIGITS or (ch == "." and i + 1 < n and text[i + 1] in _DIGITS):
            match = _NUMBER.match(text, i)
            assert match is not None
            end = match.end()
            if end < n and (text[end] in "._" or text[end].isalnum()):
                bad = re.match(r"[\w.]+", text[i:])
                assert bad is not None  # text[i] is a digit or '.'
                raise ClaimSyntaxError(
                    f"'{bad.group(0)}' is not a number (metric references look like 'arm.metric')", i + 1
                )
            value = float(match.group(0))
            if end < n and text[end] == "%":
                value, end = value / 100.0, end + 1
            tokens.append(Token("NUM", text[i:end], i, value))
            i = end
            continue
        if ch.isalpha() or ch == "_":
            match = _IDENT.match(text, i)
            if match is None:  # a non-ASCII letter
                raise ClaimSyntaxError(f"unexpected character '{ch}' (names use A-Z, a-z, 0-9 and _)", i + 1)
            end = match.end()
            if end < n and text[end] == ".":
                metric = _IDENT.match(text, end + 1)
                if metric is None:
                    raise ClaimSyntaxError(f"expected a metric name after '{text[i : end + 1]}'", end + 2)
                stop = metric.end()
                if stop < n and text[stop] == ".":
                    raise ClaimSyntaxError(
                        f"'{text[i:stop]}.' has too many dots: a reference is exactly 'arm.metric'", stop + 1
                    )
                tokens.append(Token("REF", text[i:stop], i))
                i = stop
                continue
            tokens.append(Token("IDENT", text[i:end], i))
            i = end
            continue
        op = next((c for c in _COMPARISONS if text.startswith(c, i)), None)
        if op is not None:
            tokens.append(Token("CMP", op, i))
            i += len(op)
            continue
        if ch in _SINGLE or ch in _UNICODE_MINUS:
            tokens.append(Token(ch if ch in _SINGLE else "-", ch, i))
            i += 1
            continue
        if ch == "%":
            raise ClaimSyntaxError("'%' must directly follow a number, as in 25%", i + 1)
        raise ClaimSyntaxError(f"unexpected character '{ch}'", i + 1)
    tokens.append(Token("END", "", n))
    return tokens
