"""Search constraints, ``metric OP bound`` (e.g. ``flops_ratio <= 0.25``): a trial is
feasible when every constraint in its scope holds.

Parsed once from the hypothesis's ``search.constraints``; the sampler (``execute.searcher``),
the trial (which stops an infeasible one early) and the recorder (which marks it) all
read the same ``Constraint``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from orchestrator.spec.errors import clip as _clip

_CONSTRAINT = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


@dataclass(frozen=True)
class Constraint:
    """``metric OP bound``; feasible when it holds. Parsed by a regex, never eval'd."""

    metric: str
    op: str
    bound: float

    def violation(self, value: float) -> float:
        """Optuna's convention: <= 0 feasible, > 0 by how much it is violated."""
        return value - self.bound if self.op in ("<=", "<") else self.bound - value

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


def parse_constraint(text: str) -> Constraint:
    match = _CONSTRAINT.match(text)
    if not match:
        raise ValueError(f"{_clip(text)} is not 'metric <= number' (or <, >=, >)")
    return Constraint(match[1], match[2], float(match[3]))
