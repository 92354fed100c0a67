"""A store's hypothesis runs, and which one a user named.

``orchestrate history`` lists every hypothesis-level run of the store; ``orchestrate
compare`` resolves each of its two arguments to one of them. Both read only what the
run's tags say (name, profile, verdicts, the hypothesis it refines), never its artifacts,
so listing a store of hundreds of runs is one search.

    >>> runs = hypothesis_runs(Tracker("sqlite:///mlflow.db"))          # doctest: +SKIP
    >>> runs[0].hypothesis, runs[0].verdict_counts                      # doctest: +SKIP
    ('tiny-test', {'SUPPORTED': 2, 'REFUTED': 0, 'INCONCLUSIVE': 0})
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.report.collect import ReportError, resolve_hypothesis_run
from orchestrator.tracking import LEVEL, REFINES

if TYPE_CHECKING:
    from orchestrator.tracking import Tracker

VERDICT_KINDS = ("SUPPORTED", "REFUTED", "INCONCLUSIVE")
_NTH_RUN = re.compile(r"^(?P<name>.+)@(?P<n>-?\d+)$")
_RUN_ID_PREFIX = re.compile(r"^[0-9a-f]{6,31}$")  # what `history` shows is 8 characters


@dataclass(frozen=True)
class HypothesisRun:
    """One ``orchestrate run`` of a hypothesis, as its MLflow run's tags describe it.

    Attributes:
        run_id: the hypothesis-level MLflow run.
        hypothesis: the hypothesis's name (its experiment).
        profile: the profile it ran with ("default": none).
        status: MLflow's status (FINISHED, FAILED, KILLED, RUNNING).
        start_ms: when it started, ms since the epoch.
        end_ms: when it ended; None while it runs.
        refines: the hypothesis name this one refines (spec ``refines:``); None: none.
        verdict_counts: SUPPORTED / REFUTED / INCONCLUSIVE -> how many registered claims
            got that verdict (all 0 for a run that never judged).
    """

    run_id: str
    hypothesis: str
    profile: str
    status: str
    start_ms: int
    end_ms: int | None
    refines: str | None
    verdict_counts: dict[str, int]

    @property
    def wall_s(self) -> float | None:
        """Seconds from start to end; None while it runs."""
        return None if self.end_ms is None else max(0, self.end_ms - self.start_ms) / 1000

    @property
    def judged(self) -> bool:
        return any(self.verdict_counts.values())


def hypothesis_runs(tracker: Tracker) -> list[HypothesisRun]:
    """Every hypothesis-level run of the store's active experiments, newest first."""
    experiment_ids = [e.experiment_id for e in tracker.experiments()]
    if not experiment_ids:
        return []
    runs = tracker.search_runs(experiment_ids, f"tags.`{LEVEL}` = 'hypothesis'")
    found = [_hypothesis_run(run) for run in runs]
    return sorted(found, key=lambda r: r.start_ms, reverse=True)


def _hypothesis_run(run: Any) -> HypothesisRun:
    tags = run.data.tags
    counts = dict.fromkeys(VERDICT_KINDS, 0)
    for key, value in tags.items():
        kind = value.partition(":")[0]
        if key.startswith("verdict.") and kind in counts:  # "verdict.0": "SUPPORTED: a.x >= b.x" (execute.confirm)
            counts[kind] += 1
    return HypothesisRun(
        run_id=run.info.run_id,
        hypothesis=tags.get("orchestrate.hypothesis", ""),
        profile=tags.get("orchestrate.profile", "default"),
        status=run.info.status,
        start_ms=int(run.info.start_time or 0),
        end_ms=int(run.info.end_time) if run.info.end_time else None,
        refines=tags.get(REFINES) or None,
        verdict_counts=counts,
    )


def resolve_target(tracker: Tracker, target: str) -> str:
    """The hypothesis run ``target`` names: ``NAME`` (its newest FINISHED run), ``NAME@N``
    (its N-th newest FINISHED run, ``@1`` the newest), an MLflow run id (of any run of the
    tree), or the start of one as ``history`` shows it. Raises ``ReportError`` saying what
    the store holds when nothing matches."""
    nth = _NTH_RUN.match(target)
    if nth:
        return _nth_finished(tracker, nth["name"], int(nth["n"]))
    if _RUN_ID_PREFIX.match(target) and tracker.experiment_by_name(target) is None:
        return _by_prefix(tracker, target)
    return resolve_hypothesis_run(tracker, target)


def _nth_finished(tracker: Tracker, name: str, n: int) -> str:
    if n < 1:
        raise ReportError(f"{name}@{n}: N counts from 1 (the newest FINISHED run)")
    finished = [r for r in hypothesis_runs(tracker) if r.hypothesis == name and r.status == "FINISHED"]
    if not finished:
        resolve_hypothesis_run(tracker, name)  # raises the usual "no hypothesis named" / "no FINISHED run"
    if n > len(finished):
        raise ReportError(
            f"{name}@{n}: hypothesis {name!r} has {len(finished)} FINISHED run"
            f"{'' if len(finished) == 1 else 's'} in {tracker.uri} (see orchestrate history)"
        )
    return finished[n - 1].run_id


def _by_prefix(tracker: Tracker, prefix: str) -> str:
    matches = [r.run_id for r in hypothesis_runs(tracker) if r.run_id.startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ReportError(f"{prefix} is the start of {len(matches)} hypothesis runs' ids; give more of it")
    raise ReportError(f"no hypothesis named {prefix!r} and no hypothesis run whose id starts so in {tracker.uri}")
