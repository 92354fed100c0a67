"""Which claims two runs share, which one changed, which were added or removed.

Two claims are the same when they mean the same (``Claim.canonical``: ``1%`` and
``0.01``, spacing and sides do not matter, as for ``orchestrate judge --spec``). A claim
of B that is not in A but bounds the same metrics (``arm.metric`` references) as one of
A's is that claim *changed*: its wording moved after A's data existed, so whatever it
concludes is **post hoc**. The rest are added (only in B) or removed (only in A).

    >>> changes = pair_claims(["a.x >= b.x - 0.5", "a.y <= 1"], ["a.x >= b.x - 50%", "a.y <= 2", "b.z < 3"])
    >>> [str(change.kind) for change in changes]
    ['same', 'changed', 'added']
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ClaimChangeKind(str, Enum):  # enum.StrEnum from Python 3.11; pyproject allows 3.10
    SAME = "same"
    CHANGED = "changed"  # same metrics, other bound or operator: post hoc
    ADDED = "added"
    REMOVED = "removed"

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class ClaimChange:
    """One claim of A, of B, or of both, and how it moved from A to B.

    Attributes:
        kind: same, changed (post hoc), added (only B's), removed (only A's).
        before: A's wording; None for an added claim.
        after: B's wording; None for a removed claim.
    """

    kind: ClaimChangeKind
    before: str | None
    after: str | None

    @property
    def posthoc(self) -> bool:
        """A claim reworded after data existed: its error rates are not controlled."""
        return self.kind == ClaimChangeKind.CHANGED

    @property
    def text(self) -> str:
        """The claim as it reads now (B's), or A's when B dropped it."""
        return self.after if self.after is not None else self.before or ""


def pair_claims(claims_a: list[str], claims_b: list[str]) -> list[ClaimChange]:
    """B's claims in B's order (same, changed or added), then A's removed ones in A's."""
    open_a = list(claims_a)
    changes: list[ClaimChange | None] = []
    for text in claims_b:  # first every claim that means the same: they never count as changed
        twin = next((a for a in open_a if same_meaning(a, text)), None)
        if twin is not None:
            open_a.remove(twin)
        changes.append(ClaimChange(ClaimChangeKind.SAME, twin, text) if twin is not None else None)
    for index, text in enumerate(claims_b):
        if changes[index] is not None:
            continue
        former = next((a for a in open_a if _metrics(a) == _metrics(text)), None)
        if former is not None:
            open_a.remove(former)
            changes[index] = ClaimChange(ClaimChangeKind.CHANGED, former, text)
        else:
            changes[index] = ClaimChange(ClaimChangeKind.ADDED, None, text)
    removed = [ClaimChange(ClaimChangeKind.REMOVED, text, None) for text in open_a]
    return [c for c in changes if c is not None] + removed


def same_meaning(first: str, second: str) -> bool:
    """Two claim texts that say the same (``a.x >= b.x - 1%`` and ``a.x - b.x >= -0.01``)."""
    return _meaning(first) == _meaning(second)


def _meaning(text: str) -> str:
    from orchestrator.claims import parse_claim

    try:
        return parse_claim(text).canonical()
    except ValueError:
        return " ".join(text.split())


def _metrics(text: str) -> tuple[str, ...]:
    """The ``arm.metric`` references a claim bounds; a claim that does not parse has its
    own text, so it is never taken for another."""
    from orchestrator.claims import parse_claim

    try:
        return tuple(sorted(str(ref) for ref in parse_claim(text).references()))
    except ValueError:
        return (" ".join(text.split()),)
