"""Each arm's winner after its search: the best trial, and its Pareto front when the arm
has several objectives, both told to the arm's MLflow run."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.results import COMPLETED, FAILED, INFEASIBLE, STOPPED, TrialRecord

if TYPE_CHECKING:
    from orchestrator.execute.state import RunState
    from orchestrator.plan import ArmPlan
    from orchestrator.tracking import Tracker


class AllTrialsFailedError(RuntimeError):
    """Every trial of an arm failed: there is nothing to confirm or judge."""


def pick_winner(
    tracker: Tracker, state: RunState, arm_plan: ArmPlan, arm_run: str
) -> tuple[list[TrialRecord], TrialRecord, str]:
    """The arm's trials, its best trial (``select_best``) and why, its Pareto front when
    it has several objectives, and the arm's run told both. Raises
    ``AllTrialsFailedError`` (and closes the arm's run FAILED) when there is no winner."""
    arm = arm_plan.arm
    trials = state.search_trials(arm)
    if len(arm_plan.objectives) > 1:
        log_pareto_front(tracker, arm_run, trials, arm_plan)
    best, reason = select_best(trials, arm_plan)
    if best is None:
        tracker.set_tags(arm_run, {"orchestrate.error": reason})
        tracker.log_metrics(arm_run, _count_metrics(trials))
        tracker.end_run(arm_run, "FAILED")
        raise AllTrialsFailedError(f"arm {arm!r}: {reason}")
    tracker.set_tags(
        arm_run,
        {
            "orchestrate.best_trial": best.trial_id,
            "orchestrate.best_reason": reason,
            "orchestrate.best_run": best.mlflow_run_id or "",
        },
    )
    tracker.log_metrics(arm_run, {f"best_{k}": v for k, v in best.metrics.items()} | _count_metrics(trials))
    tracker.log_params(arm_run, {f"best.{k}": v for k, v in best.params.items()})
    return trials, best, reason


def log_pareto_front(tracker: Tracker, arm_run: str, trials: list[TrialRecord], plan: ArmPlan) -> None:
    """The arm's non-dominated finished feasible trials: tagged, tabled, plotted.

    With no feasible trial, the front of the trained infeasible ones is logged instead
    (tag ``orchestrate.pareto=infeasible``, ``"feasible": false`` in the table): how far
    the arm is from its budget is what the researcher needs to see then.
    """
    import tempfile

    from orchestrator.execute.pareto import pareto_indices, plot_front

    arm = plan.arm
    names, modes = list(plan.objectives), list(plan.objectives.values())

    def measured(t: TrialRecord) -> bool:
        return all(isinstance(t.metrics.get(n), (int, float)) for n in names) and not t.metrics.get(
            "infeasible_before_training"
        )

    pool = [t for t in trials if t.status == COMPLETED and measured(t)]
    feasible = bool(pool)
    if not feasible:
        pool = [t for t in trials if t.status == INFEASIBLE and measured(t)]
    if not pool:
        return
    points = [[float(t.metrics[n]) for n in names] for t in pool]
    front = pareto_indices(points, modes)
    rows = [
        {
            "trial_id": pool[i].trial_id,
            "run_id": pool[i].mlflow_run_id,
            "feasible": feasible,
            **dict(zip(names, points[i], strict=True)),
            "params": pool[i].params,
        }
        for i in front
    ]
    for i in front:
        run_id = pool[i].mlflow_run_id
        if run_id:
            tracker.set_tags(run_id, {"orchestrate.pareto": "true" if feasible else "infeasible"})
    tracker.log_text(arm_run, json.dumps(rows, indent=1, default=str), "pareto_front.json")
    title = f"{arm}: {len(front)} of {len(pool)} trials on the front"
    if not feasible:
        title = f"{arm}: NO feasible trial; front of {len(pool)} violating {', '.join(map(str, plan.constraints))}"
    with tempfile.TemporaryDirectory() as folder:
        plot_front(points, front, names, modes, title, Path(folder) / "pareto_front.png")
        tracker.log_artifacts(arm_run, Path(folder))
    tracker.log_metrics(arm_run, {"pareto_size": len(front)})


def select_best(trials: list[TrialRecord], plan: ArmPlan) -> tuple[TrialRecord | None, str]:
    """Best finished, feasible trial by the first objective; said plainly when the
    choice had to fall back (no feasible trial) or is impossible (all failed)."""
    metric, mode = plan.primary_metric, plan.primary_mode

    def key(t: TrialRecord) -> float:
        value = t.metrics.get(metric)
        if isinstance(value, (int, float)) and value == value:
            return float(value)
        return float("-inf") if mode == "max" else float("inf")

    pick = max if mode == "max" else min
    violated = ", ".join(map(str, plan.constraints))
    for statuses, reason in (
        ((COMPLETED,), f"best {metric} ({mode}) among finished feasible trials"),
        ((INFEASIBLE,), f"NO feasible trial: best {metric} among finished trials that violate {violated}"),
        ((STOPPED,), f"no trial finished all epochs: best {metric} among early-stopped trials"),
    ):
        pool = [t for t in trials if t.status in statuses and metric in t.metrics]
        if pool:
            return pick(pool, key=key), reason
    errors = collections.Counter((t.error or "unknown").strip().splitlines()[-1] for t in trials if t.status == FAILED)
    cause = errors.most_common(1)[0][0] if errors else "no trial reported"
    return (
        None,
        f"all {len(trials)} trials failed; commonest cause ({errors.most_common(1)[0][1] if errors else 0}x): {cause}",
    )


def _count_metrics(trials: list[TrialRecord]) -> dict[str, float]:
    """The arm's trials by status, as metrics of its run."""
    counts = collections.Counter(t.status for t in trials)
    return {
        "trials_completed": counts[COMPLETED],
        "trials_failed": counts[FAILED],
        "trials_stopped": counts[STOPPED],
        "trials_infeasible": counts[INFEASIBLE],
    }
