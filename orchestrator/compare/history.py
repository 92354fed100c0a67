"""``orchestrate history``'s rows and lineages, from a store's hypothesis runs.

A lineage follows ``refines:`` from a hypothesis to the one it refines, and on to that
one's: ``radlora -> cogalora -> galora`` (child -> parent). Only hypotheses at the end
of a chain (that nothing in the store refines) start one, so each chain is shown once.

    >>> run = lambda name, refines: HypothesisRun(name, name, "default", "FINISHED", 0, 1, refines, {})
    >>> lineages([run("radlora", "cogalora"), run("cogalora", "galora"), run("galora", None)])
    [['radlora', 'cogalora', 'galora']]
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from orchestrator.compare.runs import HypothesisRun


@dataclass(frozen=True)
class HistoryRow:
    """One line of ``orchestrate history``, as text (newest run first).

    Attributes:
        hypothesis, run_id (its first 8 characters), profile, status: of the run.
        started: local time, to the second.
        wall: start to end (``running`` while it runs).
        verdicts: ``S/R/I``, the registered claims SUPPORTED / REFUTED / INCONCLUSIVE
            (``-`` for a run that judged nothing).
        refines: the hypothesis name it refines ("" for none).
    """

    hypothesis: str
    run_id: str
    profile: str
    status: str
    started: str
    wall: str
    verdicts: str
    refines: str


def history_rows(runs: list[HypothesisRun]) -> list[HistoryRow]:
    return [
        HistoryRow(
            hypothesis=run.hypothesis,
            run_id=run.run_id[:8],
            profile=run.profile,
            status=run.status,
            started=dt.datetime.fromtimestamp(run.start_ms / 1000).strftime("%Y-%m-%d %H:%M:%S"),
            wall="running" if run.wall_s is None else duration(run.wall_s),
            verdicts="/".join(str(n) for n in run.verdict_counts.values()) if run.judged else "-",
            refines=run.refines or "",
        )
        for run in runs
    ]


def duration(seconds: float) -> str:
    """``42s``, ``3m 05s``, ``2h 07m``: as precise as a glance needs.

    >>> duration(42.4), duration(185), duration(7620)
    ('42s', '3m 05s', '2h 07m')
    """
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def lineages(runs: list[HypothesisRun]) -> list[list[str]]:
    """Each chain of ``refines`` as hypothesis names, child first; newest chain first.
    A hypothesis's newest run says what it refines (an older run may have said otherwise);
    a cycle stops where a name comes back."""
    parent: dict[str, str | None] = {}
    for run in runs:  # newest first: the first seen wins
        parent.setdefault(run.hypothesis, run.refines)
    refined = {name for name in parent.values() if name}
    chains = []
    for name in parent:
        if name in refined or not parent[name]:
            continue
        chain = [name]
        while (up := parent.get(chain[-1])) and up not in chain:
            chain.append(up)
        chains.append(chain)
    return chains
