"""Runs a stopped or killed driver left RUNNING in MLflow, closed before work resumes.

A rerun closes them as KILLED (their trials run again); a clean stop or a failure
closes every run of the hypothesis still open with its status. Nothing else: the
run state says which trials finished, and they are never run again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.execute.state import RunState
    from orchestrator.tracking import Tracker


def close_stale(tracker: "Tracker", runs: dict[str, str]) -> None:
    """Runs a killed driver left RUNNING are closed as KILLED (their trials rerun)."""
    for run_id in runs.values():
        if tracker.run_status(run_id) == "RUNNING":
            tracker.set_tags(run_id, {"orchestrate.status": "KILLED"})
            tracker.end_run(run_id, "KILLED")


def close_stale_children(tracker: "Tracker", experiment_id: str, parent_id: str) -> None:
    """Also the runs a SIGKILL caught between creating them and saving the state:
    found in MLflow itself, as RUNNING children of the arm run."""
    stale = tracker.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'")
    close_stale(tracker, {run.info.run_id: run.info.run_id for run in stale})


def close_open_runs(tracker: "Tracker", state: "RunState", parent_id: str, status: str, reason: str | None = None) -> None:
    """On a stop or a failure: every run of this hypothesis still RUNNING is closed,
    also a trial's run that the stop caught between its creation and its entry in the
    run state (found in MLflow as a child of its arm's run). A failure's ``reason``
    goes to the hypothesis run's ``orchestrate.error`` tag, where the UI shows it."""
    try:
        if reason:
            tracker.set_tags(parent_id, {"orchestrate.error": reason})
        for arm in state.data.get("arms", {}).values():
            close_stale(tracker, arm.get("trial", {}))
            close_stale(tracker, arm.get("confirm", {}))
            if arm.get("arm_run_id") and state.get("experiment_id"):
                close_stale_children(tracker, state.get("experiment_id"), arm["arm_run_id"])
            if arm.get("arm_run_id") and tracker.run_status(arm["arm_run_id"]) == "RUNNING":
                tracker.end_run(arm["arm_run_id"], status)
        if tracker.run_status(parent_id) == "RUNNING":
            tracker.end_run(parent_id, status)
    except Exception:  # never mask the original interruption
        pass
