"""The expected-outcome language: what a hypothesis claims, parsed into typed claims.

``tokens`` splits a claim's text, ``claim`` parses it (the grammar is in its docstring)
into a ``Claim``: two sides of ``arm.metric`` terms and an operator, which the judge
evaluates (``orchestrator.judge``) and the spec checks name arms and metrics of.
"""

from orchestrator.claims.claim import Claim, LinearExpr, MetricRef, format_number, parse_claim
from orchestrator.claims.tokens import ClaimSyntaxError

__all__ = ["Claim", "ClaimSyntaxError", "LinearExpr", "MetricRef", "format_number", "parse_claim"]
