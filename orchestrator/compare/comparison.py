"""Two hypothesis runs side by side: what changed in the spec, in the claims, in the
verdicts and in each shared arm's numbers.

``compare_runs`` reads both runs from MLflow (``report.collect``: the logged spec, the
registered claims of ``expected.txt``, the verdicts of ``verdicts.json``, the
confirmation runs); ``build_comparison`` does the rest on plain objects, so it is tested
without a store.

    >>> comparison = compare_runs(Tracker(uri), run_a, run_b)                # doctest: +SKIP
    >>> [pair.claim for pair in comparison.verdicts if pair.flipped]         # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.compare.claims import ClaimChange, pair_claims, same_meaning
from orchestrator.report.numbers import mean_and_half_width
from orchestrator.tracking import REFINES

if TYPE_CHECKING:
    from orchestrator.judge import Verdict
    from orchestrator.report.collect import ArmSummary, RunSummary
    from orchestrator.tracking import Tracker

#: The per-arm numbers set side by side besides the task's test metric.
ARM_METRICS = ("flops_ratio", "trainable_params")


@dataclass(frozen=True)
class RunSide:
    """One of the two runs: who it is, and the spec it ran.

    Attributes:
        summary: the run as the report reads it (claims, verdicts, arms, plan).
        spec_text: the hypothesis file logged on the run (``spec/<file>``); when it
            was not logged, the logged plan as JSON; "" when neither was.
        refines: the hypothesis name it refines (tag ``orchestrate.refines``); None: none.
        start_ms: when the run started, ms since the epoch.
    """

    summary: RunSummary
    spec_text: str
    refines: str | None
    start_ms: int

    @property
    def label(self) -> str:
        return f"{self.summary.hypothesis} {self.summary.run_id[:8]} [{self.summary.profile}]"


@dataclass(frozen=True)
class VerdictPair:
    """One claim's verdict in A and in B (None where that run has no such claim).

    Attributes:
        change: how the claim moved from A to B (a changed claim is post hoc).
        verdict_a: A's verdict of ``change.before``.
        verdict_b: B's verdict of ``change.after``.
    """

    change: ClaimChange
    verdict_a: Verdict | None
    verdict_b: Verdict | None

    @property
    def claim(self) -> str:
        return self.change.text

    @property
    def flipped(self) -> bool:
        """Both runs judged it, and not alike."""
        return (
            self.verdict_a is not None
            and self.verdict_b is not None
            and self.verdict_a.verdict != self.verdict_b.verdict
        )


@dataclass(frozen=True)
class Estimate:
    """A metric over an arm's confirmation runs: mean, the half-width of its one-sided
    ``confidence`` bounds (the report's and the judge's interval; None for one seed or a
    constant), and how many runs."""

    mean: float
    half_width: float | None
    n: int


@dataclass(frozen=True)
class MetricPair:
    """One metric of one shared arm, in A and in B (None: no confirmation run has it)."""

    metric: str
    a: Estimate | None
    b: Estimate | None

    @property
    def difference(self) -> float | None:
        """B's mean minus A's."""
        return None if self.a is None or self.b is None else self.b.mean - self.a.mean


@dataclass(frozen=True)
class ArmPair:
    """An arm both runs have: its method in each, and its numbers side by side."""

    arm: str
    method_a: str
    method_b: str
    metrics: list[MetricPair]


@dataclass(frozen=True)
class Comparison:
    """A -> B: everything ``orchestrate compare`` shows.

    Attributes:
        a, b: the two runs.
        spec_diff: the unified diff of A's spec into B's (no lines: the same text).
        claims: every claim of either run, paired (``compare.claims.pair_claims``).
        verdicts: each claim's verdict in A and in B.
        arms: the arms both runs have, in B's order.
        only_a, only_b: arms one run has and the other not.
    """

    a: RunSide
    b: RunSide
    spec_diff: list[str]
    claims: list[ClaimChange]
    verdicts: list[VerdictPair]
    arms: list[ArmPair]
    only_a: list[str]
    only_b: list[str]

    @property
    def flipped(self) -> list[VerdictPair]:
        return [pair for pair in self.verdicts if pair.flipped]

    @property
    def lineage(self) -> str | None:
        """How the two relate, in words, when they do."""
        a, b = self.a.summary.hypothesis, self.b.summary.hypothesis
        if a == b:
            return f"two runs of {a}"
        if self.b.refines == a:
            return f"{b} refines {a}"
        if self.a.refines == b:
            return f"{a} refines {b} (B is the earlier version)"
        return None


def compare_runs(tracker: Tracker, run_a: str, run_b: str) -> Comparison:
    """Read both hypothesis runs from MLflow and compare them."""
    return build_comparison(_side(tracker, run_a), _side(tracker, run_b))


def _side(tracker: Tracker, run_id: str) -> RunSide:
    from orchestrator.report.collect import collect_summary

    summary = collect_summary(tracker, run_id, with_images=False, with_history=False)
    run = tracker.get_run(run_id)
    spec_text = None
    if summary.spec_file:
        spec_text = tracker.read_text(run_id, f"spec/{Path(summary.spec_file).name}")
    if spec_text is None and summary.plan:
        spec_text = json.dumps(summary.plan, indent=1, sort_keys=True, default=str) + "\n"
    return RunSide(
        summary=summary,
        spec_text=spec_text or "",
        refines=run.data.tags.get(REFINES) or None,
        start_ms=int(run.info.start_time or 0),
    )


def build_comparison(a: RunSide, b: RunSide) -> Comparison:
    claims = pair_claims(a.summary.claims, b.summary.claims)
    arms_a = {arm.arm: arm for arm in a.summary.arms}
    arms_b = {arm.arm: arm for arm in b.summary.arms}
    return Comparison(
        a=a,
        b=b,
        spec_diff=spec_diff(a, b),
        claims=claims,
        verdicts=[
            VerdictPair(
                change,
                _verdict_of(a.summary.verdicts, change.before),
                _verdict_of(b.summary.verdicts, change.after),
            )
            for change in claims
        ],
        arms=[_arm_pair(arms_a[name], a.summary, arm, b.summary) for name, arm in arms_b.items() if name in arms_a],
        only_a=[name for name in arms_a if name not in arms_b],
        only_b=[name for name in arms_b if name not in arms_a],
    )


def spec_diff(a: RunSide, b: RunSide) -> list[str]:
    """A's logged spec into B's, as ``diff -u`` prints it (3 lines of context)."""
    lines = difflib.unified_diff(
        a.spec_text.splitlines(),
        b.spec_text.splitlines(),
        fromfile=f"A {a.summary.run_id[:8]} {Path(a.summary.spec_file).name}",
        tofile=f"B {b.summary.run_id[:8]} {Path(b.summary.spec_file).name}",
        lineterm="",
    )
    return list(lines)


def _verdict_of(verdicts: list[Verdict], claim: str | None) -> Verdict | None:
    """The verdict of the claim as written, else of one that means the same."""
    if claim is None:
        return None
    exact = next((v for v in verdicts if v.claim == claim), None)
    if exact is not None:
        return exact
    return next((v for v in verdicts if same_meaning(v.claim, claim)), None)


def _arm_pair(arm_a: ArmSummary, summary_a: RunSummary, arm_b: ArmSummary, summary_b: RunSummary) -> ArmPair:
    metrics = [f"test_{summary_b.metric}", *ARM_METRICS]
    if summary_a.metric != summary_b.metric:  # a changed task metric: both, each where it was measured
        metrics.insert(0, f"test_{summary_a.metric}")
    return ArmPair(
        arm=arm_b.arm,
        method_a=arm_a.method,
        method_b=arm_b.method,
        metrics=[
            MetricPair(m, _estimate(arm_a, m, summary_a.confidence), _estimate(arm_b, m, summary_b.confidence))
            for m in metrics
        ],
    )


def _estimate(arm: ArmSummary, metric: str, confidence: float) -> Estimate | None:
    values = [
        float(run.metrics[metric])
        for run in arm.usable_confirms()
        if metric in run.metrics and math.isfinite(run.metrics[metric])
    ]
    if not values:
        return None
    mean, half_width = mean_and_half_width(values, confidence)
    return Estimate(mean, half_width, len(values))
