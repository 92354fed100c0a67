"""The MLflow runs of a hypothesis: created once, resumed, described, and closed.

The hypothesis's run and each arm's run are created once: their ids are saved in the run
state before anything is logged to them, so a rerun after a kill resumes them instead of
leaving orphans beside second copies. Runs a stopped or killed driver left RUNNING are
closed before work resumes: a rerun closes them as KILLED (their trials run again); a
clean stop or a failure closes every run of the hypothesis still open with its status.
Nothing else: the run state says which trials finished, and they are never run again.
"""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.results import STOPPED, RunKind, TrialRecord
from orchestrator.tracking import ARM, LEVEL, REFINES

if TYPE_CHECKING:
    from orchestrator.execute.progress import ArmProgress
    from orchestrator.execute.run_context import RunContext
    from orchestrator.execute.state import RunState
    from orchestrator.plan import ArmPlan, Plan
    from orchestrator.tracking import Tracker

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "optuna",
    "optuna-integration",
    "botorch",
    "ray",
    "mlflow",
    "pydantic",
    "hypothesis-orchestrator",
)


def open_hypothesis_run(tracker: Tracker, experiment_id: str, plan: Plan, state: RunState) -> str:
    """The hypothesis's MLflow run, created once: its id is saved before anything is
    logged to it, so a kill in between leaves a run that the next start completes,
    not an orphan beside a second parent."""
    existing = state.parent_run_id
    if existing and tracker.run_status(existing) is not None:
        tracker.reopen_run(existing)
        tracker.set_tags(existing, {"orchestrate.resumed": "true"})
        tracker.delete_tag(existing, "orchestrate.error")  # why the earlier attempt failed; this one goes on
        return existing
    tags = {
        LEVEL: "hypothesis",
        "orchestrate.hypothesis": plan.name,
        "orchestrate.profile": plan.profile,
        "orchestrate.spec_sha256": plan.spec_sha256,
        "orchestrate.spec_file": plan.spec_path,
        "orchestrate.git_commit": _git_commit(plan.spec_path),
        "mlflow.note.content": plan.statement,
        **({REFINES: plan.refines} if plan.refines else {}),  # the lineage `orchestrate history` shows
    }
    run_id = tracker.start_run(experiment_id, f"{plan.name} [{plan.profile}]", tags)
    state.set_parent_run(run_id, experiment_id)
    return run_id


def describe_hypothesis_run(tracker: Tracker, run_id: str, plan: Plan) -> None:
    """The spec, the plan and the claims on the hypothesis's run, once (a resumed run
    that a kill caught before its description was complete gets it now)."""
    if "profile" in tracker.get_run(run_id).data.params:
        return
    tracker.log_text(run_id, Path(plan.spec_path).read_text(), f"spec/{Path(plan.spec_path).name}")
    tracker.log_text(run_id, json.dumps(plan.to_dict(), indent=1, default=str), "plan.json")
    tracker.log_text(run_id, "\n".join(plan.judge.claims), "expected.txt")
    tracker.log_params(
        run_id,
        {  # last: its presence says the description is complete
            "profile": plan.profile,
            "sampler": _every_arm(a.sampler.name for a in plan.arms),
            "trials_per_arm": _every_arm(a.trials for a in plan.arms),
            "confirm_seeds": plan.confirm.seeds,
            "confirm_split": plan.confirm.split,
            "confidence": plan.judge.confidence,
            "arms": ",".join(a.arm for a in plan.arms),
            "task_model": plan.task.model,
            "task_dataset": plan.task.dataset,
            **{f"version.{name}": version for name, version in _versions().items()},
        },
    )


def open_arm_run(run: RunContext, arm_plan: ArmPlan) -> str:
    """The arm's MLflow run, a child of the hypothesis's, created once (its id saved
    first: a kill now leaves no orphan); on a resume, reopened after closing the trial
    runs a SIGKILL left RUNNING under it."""
    tracker, arm = run.tracker, arm_plan.arm
    arm_run = run.state.arm(arm).arm_run_id
    arm_params = {
        "method": arm_plan.method,
        **{f"fixed.{k}": v for k, v in arm_plan.fixed.items()},
        "space": arm_plan.space_file or "-",
    }
    if not arm_run or tracker.run_status(arm_run) is None:
        arm_run = tracker.start_run(
            run.experiment_id,
            f"{arm} ({arm_plan.method})",
            {LEVEL: "arm", ARM: arm, "orchestrate.method": arm_plan.method},
            run.parent_id,
        )
        run.state.set_arm_run(arm, arm_run)  # first: a kill now leaves no orphan
    else:
        close_stale_children(tracker, run.experiment_id, arm_run)
        tracker.reopen_run(arm_run)
    tracker.log_params(arm_run, arm_params)  # again on a resume: the same values (a kill may have come before them)
    return arm_run


def base_tags(plan: Plan, arm_plan: ArmPlan) -> dict[str, str]:
    """The tags every run of an arm carries (search trials, reused trials, confirmation runs)."""
    return {"orchestrate.hypothesis": plan.name, "orchestrate.method": arm_plan.method}


def log_reused_trial(
    run: RunContext, arm_run: str, prior: TrialRecord, tags: dict[str, str], progress: ArmProgress
) -> TrialRecord:
    """An archived trial (possibly of another hypothesis's arm with the same search)
    as a trial run of this search, once even across resumes: its parameters, final
    metrics and status, and the run it came from."""
    tracker, state = run.tracker, run.state
    run_id = state.trial_run(prior.arm, RunKind.TRIAL, prior.trial_id)
    status = tracker.run_status(run_id) if run_id else None
    if not run_id or status is None:  # (status is None whenever run_id is empty: said so that mypy sees it)
        run_tags = {
            **tags,
            LEVEL: RunKind.TRIAL,
            ARM: prior.arm,
            "orchestrate.trial_id": prior.trial_id,
            "orchestrate.status": prior.status,
            "orchestrate.reused_from": prior.reused_from or prior.mlflow_run_id or "",
        }
        run_id = tracker.start_run(
            run.experiment_id, f"{prior.arm} reused {prior.trial_id}", run_tags, parent_id=arm_run
        )
        state.set_trial_run(prior.arm, RunKind.TRIAL, prior.trial_id, run_id)
    if status != "FINISHED":  # new, or killed before it was complete: params are idempotent, metrics the same values
        tracker.set_tags(run_id, {"orchestrate.status": prior.status})  # not the KILLED that closing a stale run set
        tracker.log_params(run_id, prior.params | prior.runtime)
        tracker.log_metrics(
            run_id, {k: v for k, v in prior.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        )
        tracker.end_run(run_id, "FINISHED")
    progress.done += 1
    if prior.status == STOPPED:
        progress.stopped += 1
    progress.offer(prior.metrics.get(progress.metric))
    return replace(prior, mlflow_run_id=run_id, reused_from=prior.reused_from or prior.mlflow_run_id)


def close_stale(tracker: Tracker, runs: dict[str, str]) -> None:
    """Runs a killed driver left RUNNING are closed as KILLED (their trials rerun)."""
    for run_id in runs.values():
        if tracker.run_status(run_id) == "RUNNING":
            tracker.set_tags(run_id, {"orchestrate.status": "KILLED"})
            tracker.end_run(run_id, "KILLED")


def close_stale_children(tracker: Tracker, experiment_id: str, parent_id: str) -> None:
    """Also the runs a SIGKILL caught between creating them and saving the state:
    found in MLflow itself, as RUNNING children of the arm run."""
    stale = tracker.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'"
    )
    close_stale(tracker, {run.info.run_id: run.info.run_id for run in stale})


def close_open_runs(tracker: Tracker, state: RunState, parent_id: str, status: str, reason: str | None = None) -> None:
    """On a stop or a failure: every run of this hypothesis still RUNNING is closed,
    also a trial's run that the stop caught between its creation and its entry in the
    run state (found in MLflow as a child of its arm's run). A failure's ``reason``
    goes to the hypothesis run's ``orchestrate.error`` tag, where the UI shows it."""
    steps: list[Callable[[], object]] = []
    if reason:
        steps.append(partial(tracker.set_tags, parent_id, {"orchestrate.error": reason}))
    for arm in state.arms().values():
        steps += [partial(close_stale, tracker, arm.trial_runs), partial(close_stale, tracker, arm.confirm_runs)]
        if arm.arm_run_id and state.experiment_id:
            steps.append(partial(close_stale_children, tracker, state.experiment_id, arm.arm_run_id))
        if arm.arm_run_id:
            steps.append(partial(_end_if_running, tracker, arm.arm_run_id, status))
    steps.append(partial(_end_if_running, tracker, parent_id, status))
    for step in steps:  # each on its own: one that fails leaves the others to do
        with contextlib.suppress(Exception):  # never mask the original interruption
            step()


def _end_if_running(tracker: Tracker, run_id: str, status: str) -> None:
    if tracker.run_status(run_id) == "RUNNING":
        tracker.end_run(run_id, status)


def _every_arm(values: Iterable[object]) -> str:
    """A setting every arm has, as one param: its value, or the arms' values in order
    when they differ."""
    return ",".join(dict.fromkeys(str(value) for value in values))


def _git_commit(spec_path: str) -> str:
    """The commit of the repository holding the hypothesis file (the run may start elsewhere)."""
    try:
        folder = str(Path(spec_path).resolve().parent)
        out = subprocess.run(
            ["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    """The installed versions of the packages a run's results depend on (``PACKAGES``)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
