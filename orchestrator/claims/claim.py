"""The expected-outcome language: ``arm.metric`` claims, parsed by a small grammar.

A hypothesis lists what the researcher expects, e.g.::

    radlora.test_accuracy >= lora.test_accuracy - 0.01
    radlora.flops_ratio <= 25%
    radlora.active_layers <= 0.5 * lora.active_layers
    dora.test_accuracy in [0.85, 0.95]
    pissa.test_accuracy within 0.02 of lora.test_accuracy

Grammar (whitespace between tokens is free)::

    claim   := expr CMP expr
             | expr "in" "[" const "," const "]"
             | expr "within" const "of" expr
    CMP     := "<" | "<=" | ">" | ">="          (also "≤", "≥")
    expr    := term (("+" | "-") term)*
    term    := unary (("*" | "/") unary)*       (one side of * and the divisor of /
    unary   := ("-" | "+") unary | primary       must be free of metrics)
    primary := NUMBER ["%"] | REF | "(" expr ")"
    REF     := IDENT "." IDENT                  IDENT = [A-Za-z_][A-Za-z0-9_]*
    NUMBER  := 12 | 0.5 | .5 | 1e-3 | 2.5E+2    ("25%" is 0.25)

Every claim reduces to bounds on one linear quantity ``D = c0 + sum(c_i * arm_i.metric_i)``::

    compare  LHS OP RHS      D = LHS - RHS,  D OP 0
    range    X in [a, b]     D = X,          a <= D <= b
    within   X within m of Y D = X - Y,      -m <= D <= m

and ``D`` is oriented so that its first metric has a positive coefficient
(``0.25 >= a.x`` becomes ``a.x - 0.25 <= 0``), which makes reports read naturally.
The text is tokenized and parsed by hand; nothing a user writes is ever evaluated
as Python.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from orchestrator.claims.tokens import ClaimSyntaxError, Token, tokenize

__all__ = ["Claim", "ClaimSyntaxError", "LinearExpr", "MetricRef", "parse_claim"]

ClaimKind = Literal["compare", "range", "within"]


@dataclass(frozen=True, order=True)
class MetricRef:
    """One ``arm.metric`` reference."""

    arm: str
    metric: str

    def __str__(self) -> str:
        return f"{self.arm}.{self.metric}"


@dataclass(frozen=True)
class LinearExpr:
    """``constant + sum(coefficient * ref)``; coefficients in order of first appearance."""

    constant: float = 0.0
    coefficients: Mapping[MetricRef, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kept = {ref: float(c) for ref, c in self.coefficients.items() if c != 0.0}
        object.__setattr__(self, "coefficients", MappingProxyType(kept))
        object.__setattr__(self, "constant", float(self.constant))

    def __hash__(self) -> int:
        return hash((self.constant, tuple(self.coefficients.items())))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LinearExpr):
            return NotImplemented
        return self.constant == other.constant and dict(self.coefficients) == dict(other.coefficients)

    @property
    def is_constant(self) -> bool:
        return not self.coefficients

    def references(self) -> list[MetricRef]:
        return list(self.coefficients)

    def __add__(self, other: LinearExpr) -> LinearExpr:
        merged = dict(self.coefficients)
        for ref, c in other.coefficients.items():
            merged[ref] = merged.get(ref, 0.0) + c
        return LinearExpr(self.constant + other.constant, merged)

    def __neg__(self) -> LinearExpr:
        return self.scaled(-1.0)

    def __sub__(self, other: LinearExpr) -> LinearExpr:
        return self + (-other)

    def scaled(self, factor: float) -> LinearExpr:
        return LinearExpr(self.constant * factor, {r: c * factor for r, c in self.coefficients.items()})

    def variable_part(self) -> LinearExpr:
        """The same expression without its constant."""
        return LinearExpr(0.0, self.coefficients)

    def evaluate(self, values: Mapping[MetricRef, float]) -> float:
        return self.constant + sum(c * values[r] for r, c in self.coefficients.items())

    def __str__(self) -> str:
        parts: list[str] = []
        for ref, c in self.coefficients.items():
            sign = "-" if c < 0 else "+"
            mag = abs(c)
            term = str(ref) if mag == 1.0 else f"{format_number(mag)} * {ref}"
            parts.append(f"{sign} {term}")
        if self.constant != 0.0 or not parts:
            sign = "-" if self.constant < 0 else "+"
            parts.append(f"{sign} {format_number(abs(self.constant))}")
        text = " ".join(parts)
        return text[2:] if text.startswith("+ ") else "-" + text[2:]


def format_number(x: float) -> str:
    """Shortest faithful text for a number: 2, 0.01, 1e-05."""
    if math.isfinite(x) and x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(float(x))


@dataclass(frozen=True)
class Claim:
    """A parsed claim: ``lower (<|<=) expr (<|<=) upper`` (one bound may be None).

    Example:
        >>> c = parse_claim("radlora.test_accuracy >= lora.test_accuracy - 0.01")
        >>> c.kind, str(c.expr), c.lower, c.upper
        ('compare', 'radlora.test_accuracy - lora.test_accuracy + 0.01', 0.0, None)
    """

    text: str
    kind: ClaimKind
    expr: LinearExpr
    lower: float | None
    upper: float | None
    lower_strict: bool = False
    upper_strict: bool = False

    def references(self) -> list[MetricRef]:
        return self.expr.references()

    def arms(self) -> list[str]:
        return list(dict.fromkeys(r.arm for r in self.references()))

    def canonical(self) -> str:
        """The normal form, e.g. ``-0.01 <= a.x - b.x <= 0.01``."""
        left = right = ""
        if self.lower is not None:
            left = f"{format_number(self.lower)} {'<' if self.lower_strict else '<='} "
        if self.upper is not None:
            right = f" {'<' if self.upper_strict else '<='} {format_number(self.upper)}"
        return f"{left}{self.expr}{right}"

    def holds_at(self, value: float, tolerance: float = 0.0) -> bool:
        """Whether the claim holds when ``expr`` equals ``value`` exactly."""
        if self.lower is not None:
            tol = tolerance * max(1.0, abs(self.lower))
            if (value <= self.lower + tol) if self.lower_strict else (value < self.lower - tol):
                return False
        if self.upper is not None:
            tol = tolerance * max(1.0, abs(self.upper))
            if (value >= self.upper - tol) if self.upper_strict else (value > self.upper + tol):
                return False
        return True

    def __str__(self) -> str:
        return self.text


# ---------------------------------------------------------------------------- parser


@dataclass(frozen=True)
class _Node:
    expr: LinearExpr
    start: int
    end: int


_OPERATOR_HELP = "a comparison operator (<, <=, >, >=), 'in [a, b]' or 'within m of Y'"
#: Parentheses and signs nest by recursion; without a limit "((((...1...))))" or
#: "- - - ... 1" ended in RecursionError instead of a ClaimSyntaxError (fuzzing).
MAX_NESTING = 50


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0
        self.depth = 0

    # -- helpers
    @property
    def tok(self) -> Token:
        return self.tokens[self.pos]

    def advance(self) -> Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def src(self, node: _Node) -> str:
        return self.text[node.start : node.end]

    def error(self, message: str, token: Token | None = None) -> ClaimSyntaxError:
        return ClaimSyntaxError(message, (token or self.tok).column)

    def expect(self, kind: str, what: str, after: str) -> Token:
        if self.tok.kind != kind:
            raise self.error(f"expected {what} after {after}, got {self.tok.describe()}")
        return self.advance()

    def is_keyword(self, word: str) -> bool:
        return self.tok.kind == "IDENT" and self.tok.text == word

    # -- grammar
    def claim(self) -> Claim:
        if self.tok.kind == "END":
            raise self.error("empty claim: expected something like 'arm.metric >= 0.9'")
        left = self.expr()
        token = self.tok
        if token.kind == "CMP":
            claim = self.comparison(left)
        elif self.is_keyword("in"):
            claim = self.range(left)
        elif self.is_keyword("within"):
            claim = self.within(left)
        elif token.kind == "END":
            raise self.error(f"expected {_OPERATOR_HELP} after '{self.src(left)}'")
        else:
            raise self.error(f"expected {_OPERATOR_HELP} after '{self.src(left)}', got {token.describe()}")
        if self.tok.kind == "CMP":
            raise self.error("only one comparison per claim: write two claims, or use 'X in [a, b]'")
        if self.tok.kind != "END":
            raise self.error(f"unexpected {self.tok.describe()} after the end of the claim")
        numbers = [claim.expr.constant, *claim.expr.coefficients.values(), claim.lower or 0.0, claim.upper or 0.0]
        if not all(math.isfinite(x) for x in numbers):  # 1e999, or 1e300 * 1e300 * a.x
            raise ClaimSyntaxError("a number in this claim is too large (it overflows to infinity)", 1)
        if claim.expr.is_constant:
            raise ClaimSyntaxError(
                "the claim does not depend on any metric: it must mention at least one 'arm.metric'"
                if not any(t.kind == "REF" for t in self.tokens)
                else "the metrics in this claim cancel out, so it does not depend on any measurement",
                1,
            )
        return _oriented(claim)

    def comparison(self, left: _Node) -> Claim:
        op_token = self.advance()
        op = {"≤": "<=", "≥": ">=", "=<": "<=", "=>": ">="}.get(op_token.text, op_token.text)
        if op in ("==", "=", "!=", "<>"):
            raise self.error(
                f"'{op_token.text}' is not supported: equality cannot be shown from a few noisy runs; "
                "use 'X within m of Y' (or 'X in [a, b]')",
                op_token,
            )
        if self.tok.kind == "END":
            raise self.error(f"expected an expression after '{op_token.text}'")
        right = self.expr()
        diff = left.expr - right.expr
        strict = op in ("<", ">")
        if op in ("<", "<="):
            return Claim(self.text, "compare", diff, None, 0.0, upper_strict=strict)
        return Claim(self.text, "compare", diff, 0.0, None, lower_strict=strict)

    def range(self, subject: _Node) -> Claim:
        in_token = self.advance()
        self.expect("[", "'['", f"'{in_token.text}' (a range is written [low, high])")
        low = self.constant("the range's lower bound")
        self.expect(",", "','", "the range's lower bound")
        high = self.constant("the range's upper bound")
        self.expect("]", "']'", "the range's upper bound")
        if low.expr.constant > high.expr.constant:
            raise ClaimSyntaxError(
                f"empty range: the lower bound {self.src(low)} is above the upper bound {self.src(high)}",
                low.start + 1,
            )
        return Claim(self.text, "range", subject.expr, low.expr.constant, high.expr.constant)

    def within(self, subject: _Node) -> Claim:
        self.advance()
        margin = self.constant("the margin after 'within'")
        if margin.expr.constant < 0:
            raise ClaimSyntaxError(f"the margin must be >= 0, got {self.src(margin)}", margin.start + 1)
        if not self.is_keyword("of"):
            raise self.error(f"expected 'of' after the margin '{self.src(margin)}', got {self.tok.describe()}")
        of_token = self.advance()
        if self.tok.kind == "END":
            raise self.error("expected an expression after 'of'", of_token)
        other = self.expr()
        m = margin.expr.constant
        return Claim(self.text, "within", subject.expr - other.expr, -m, m)

    def constant(self, what: str) -> _Node:
        if self.tok.kind not in ("NUM", "REF", "(", "-", "+"):
            got = "" if self.tok.kind == "END" else f", got {self.tok.describe()}"
            raise self.error(f"expected a number for {what}{got}")
        node = self.expr()
        if not node.expr.is_constant:
            raise ClaimSyntaxError(f"{what} must be a number, not a metric ('{self.src(node)}')", node.start + 1)
        return node

    def expr(self) -> _Node:
        node = self.term()
        while self.tok.kind in ("+", "-"):
            op = self.advance()
            right = self.term()
            combined = node.expr + right.expr if op.kind == "+" else node.expr - right.expr
            node = _Node(combined, node.start, right.end)
        return node

    def term(self) -> _Node:
        node = self.unary()
        while self.tok.kind in ("*", "/"):
            op = self.advance()
            right = self.unary()
            if op.kind == "*":
                if not node.expr.is_constant and not right.expr.is_constant:
                    raise self.error(
                        f"claims must be linear in metrics: '{self.src(node)}' * '{self.src(right)}' "
                        "multiplies two metrics; multiply a metric only by a number",
                        op,
                    )
                product = (
                    right.expr.scaled(node.expr.constant)
                    if node.expr.is_constant
                    else node.expr.scaled(right.expr.constant)
                )
                node = _Node(product, node.start, right.end)
            else:
                if not right.expr.is_constant:
                    raise self.error(
                        f"claims must be linear in metrics: cannot divide by '{self.src(right)}'; "
                        "divide only by a number (write 'a.x <= 0.5 * b.y', not 'a.x / b.y <= 0.5')",
                        op,
                    )
                if right.expr.constant == 0.0:
                    raise self.error(f"division by zero ('{self.src(right)}')", op)
                node = _Node(node.expr.scaled(1.0 / right.expr.constant), node.start, right.end)
        return node

    def unary(self) -> _Node:
        if self.tok.kind in ("-", "+"):
            op = self.advance()
            self.nest(op)
            inner = self.unary()
            self.depth -= 1
            return _Node(-inner.expr if op.kind == "-" else inner.expr, op.start, inner.end)
        return self.primary()

    def nest(self, token: Token) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(f"the claim nests signs or parentheses more than {MAX_NESTING} deep", token)

    def primary(self) -> _Node:
        token = self.tok
        if token.kind == "NUM":
            self.advance()
            return _Node(LinearExpr(token.value), token.start, token.start + len(token.text))
        if token.kind == "REF":
            self.advance()
            arm, metric = token.text.split(".")
            ref = LinearExpr(0.0, {MetricRef(arm, metric): 1.0})
            return _Node(ref, token.start, token.start + len(token.text))
        if token.kind == "(":
            self.advance()
            if self.tok.kind == ")":
                raise self.error("empty parentheses")
            self.nest(token)
            inner = self.expr()
            self.depth -= 1
            if self.tok.kind != ")":
                raise self.error(
                    f"missing ')' to close the '(' at column {token.column}"
                    + ("" if self.tok.kind == "END" else f", got {self.tok.describe()}")
                )
            close = self.advance()
            return _Node(inner.expr, token.start, close.start + 1)
        if token.kind == "IDENT":
            raise self.error(
                f"'{token.text}' is not a metric reference: write 'arm.metric', e.g. '{token.text}.test_accuracy'"
            )
        if token.kind == "END":
            raise self.error("the claim ends too early: expected a number, an 'arm.metric' or '('")
        raise self.error(f"expected a number, an 'arm.metric' or '(', got {token.describe()}")


def _oriented(claim: Claim) -> Claim:
    """Flip ``D`` so that its first metric has a positive coefficient."""
    first = next(iter(claim.expr.coefficients.values()))
    if first > 0:
        return claim
    return Claim(
        claim.text,
        claim.kind,
        -claim.expr,
        None if claim.upper is None else -claim.upper,
        None if claim.lower is None else -claim.lower,
        lower_strict=claim.upper_strict,
        upper_strict=claim.lower_strict,
    )


def parse_claim(text: str) -> Claim:
    """Parse one expected outcome.

    Example:
        >>> parse_claim("radlora.flops_ratio <= 25%").canonical()
        'radlora.flops_ratio - 0.25 <= 0'

    Raises:
        ClaimSyntaxError: with a 1-based column, for anything that is not a claim.
    """
    if not isinstance(text, str):
        raise ClaimSyntaxError(f"a claim must be text, got {type(text).__name__}", 1)
    claim = _Parser(text).claim()
    return Claim(
        text.strip(), claim.kind, claim.expr, claim.lower, claim.upper, claim.lower_strict, claim.upper_strict
    )
