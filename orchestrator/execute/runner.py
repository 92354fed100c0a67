"""Plan -> search every arm -> confirm the winners -> judge: the driver's flow.

Every arm is searched in one Tuner (``tuning.run_searches``: a searcher and a scheduler
per arm behind one dispatcher, one set of worker processes for all); then every arm's
winner is confirmed, one Tuner per round of seeds (``execute.confirm``), with a look
of the judge after each round (``execute.looks``): only the arms of claims still open go
on to the next round. Without ``confirm.max_seeds`` that is one round and one look.
The steps live beside it: the MLflow runs' lifecycle in ``execute.mlflow_runs``, each
arm's winner and Pareto front in ``execute.winners``, what the steps share in
``execute.run_context``.

Each step is persisted in ``RunState`` as soon as it finishes, so a rerun of the same
command skips what is done: finished arms are not searched again, trials already in
MLflow are never logged twice, and runs a killed driver left RUNNING are closed as
KILLED before work resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from methods import get_method
from orchestrator.execute.archive import TrialArchive, search_identity
from orchestrator.execute.confirm import SearchedArm, confirm_arms, judge_and_log
from orchestrator.execute.interrupts import catching_stop_requests
from orchestrator.execute.interrupts import install as install_stop_handlers
from orchestrator.execute.mlflow_runs import (
    base_tags,
    close_open_runs,
    close_stale,
    describe_hypothesis_run,
    log_reused_trial,
    open_arm_run,
    open_hypothesis_run,
)
from orchestrator.execute.progress import Progress
from orchestrator.execute.recorder import TrialRecorder
from orchestrator.execute.run_context import RunContext
from orchestrator.execute.run_lock import hold_run_lock
from orchestrator.execute.run_log import prune_logs, ray_log_path, search_finished
from orchestrator.execute.state import RunState
from orchestrator.execute.winners import AllTrialsFailedError, pick_winner
from orchestrator.plan import ArmPlan, Plan
from orchestrator.results import ArmOutcome, RunKind, TrialRecord
from orchestrator.tracking import Tracker
from orchestrator.trial.training import TrialSetup

if TYPE_CHECKING:
    from orchestrator.execute.tuning import SearchRequest
    from orchestrator.judge import Verdict

__all__ = ["AllTrialsFailedError", "RunOptions", "RunOutcome", "run_plan"]


@dataclass
class RunOptions:
    """Where and how this machine runs a plan (the command line's options, not the spec's).

    Attributes:
        tracking_uri: the MLflow store; None: MLflow's default (``MLFLOW_TRACKING_URI``
            or ./mlruns).
        address: a Ray cluster to join; None: a local Ray started for the run.
        storage_path: where Ray Tune keeps its experiments (restored after a kill);
            None: ``<state_dir>/ray``.
        state_dir: the run state, the lock, the trial archive and the tokenised cache.
        fresh: start over: ignore the saved run state and the trial archive.
        quiet: no live table, only the lines that matter.
        verbose: Ray's own lines (its warnings) on standard error, as Ray prints them;
            else into a file under ``<state_dir>/logs`` (``run_log.ray_log_path``).
        report_dir: where ``pipeline.run_hypothesis`` writes the report; None:
            reports/<name>-<run id>.
    """

    tracking_uri: str | None = None
    address: str | None = None
    storage_path: str | None = None
    state_dir: Path = Path(".orchestrate")
    fresh: bool = False
    quiet: bool = False
    verbose: bool = False
    report_dir: Path | None = None


@dataclass
class RunOutcome:
    """What a finished run leaves: where it logged, each arm's trials, winner and
    confirmation runs, and the verdicts.

    Attributes:
        plan: the plan that ran.
        tracking_uri: the MLflow store the run logged to.
        parent_run_id: the hypothesis's MLflow run.
        experiment_id: its MLflow experiment (named after the hypothesis).
        arms: per arm, in the plan's order: its trials, best trial and why, and its
            confirmation runs.
        verdicts: one ``judge.Verdict`` per registered claim, in their order (the last look's).
        report_path: the report's ``report.md``, set by ``pipeline.run_hypothesis`` once
            the run is closed; None: not written (yet).
    """

    plan: Plan
    tracking_uri: str
    parent_run_id: str
    experiment_id: str
    arms: list[ArmOutcome]
    verdicts: list[Verdict] = field(default_factory=list)
    report_path: Path | None = None


def run_plan(plan: Plan, options: RunOptions) -> RunOutcome:
    """Search, confirm and judge ``plan``, holding the run lock of its hypothesis and
    profile in the state folder (``run_lock``): a second run of the same refuses with
    ``RunLockedError`` before MLflow or Ray are touched."""
    with hold_run_lock(options.state_dir.resolve(), plan.name, plan.profile):
        return _run_plan_locked(plan, options)


def _run_plan_locked(plan: Plan, options: RunOptions) -> RunOutcome:
    """Search, confirm and judge ``plan``; see the module docstring.

    The order of the first steps is what makes "nothing started" true for bad input:
    the store is opened and the run state read (either may be damaged: exit 2), the
    data are read and tokenised (a model or dataset that cannot load: exit 1), and only
    then is the hypothesis's MLflow run created. Any failure after that closes every
    run still open, the hypothesis's run with the reason in ``orchestrate.error``.
    """
    from orchestrator.execute.ray_session import ray_session
    from orchestrator.tasks.prepare import cache_key, prepare_task

    state_dir = options.state_dir.resolve()
    tracker = Tracker(options.tracking_uri)
    state = RunState.open(state_dir / "state", plan.name, plan.profile, plan.spec_sha256, options.fresh)
    progress = Progress(options.quiet)
    data = prepare_task(plan.task, Path(plan.spec_path).parent, state_dir / "cache", warn=progress.warn)
    data_key = cache_key(plan.task, Path(plan.spec_path).parent)
    experiment_id = tracker.experiment_id(plan.name)
    parent_id = open_hypothesis_run(tracker, experiment_id, plan, state)
    storage = options.storage_path or str(state_dir / "ray")
    archive = TrialArchive(state_dir / "archive") if plan.search.reuse_trials and not options.fresh else None
    ray_log = None if options.verbose else ray_log_path(state_dir, plan.name, plan.profile)
    if ray_log is not None:
        prune_logs(ray_log.parent)  # the older runs' Ray logs beyond the newest KEEP_LOGS
    arms: list[ArmOutcome] = []
    try:
        describe_hypothesis_run(tracker, parent_id, plan)
        with catching_stop_requests(), ray_session(options.address, log_file=ray_log) as where, progress:
            import ray

            install_stop_handlers()  # again: ray.init replaced our SIGTERM handler with its own
            ray_lines = f"; Ray's log: {ray_log}" if ray_log else ""
            progress.line(f"{plan.name} [{plan.profile}] on {where}; MLflow {tracker.uri} run {parent_id}{ray_lines}")
            run = RunContext(
                plan, tracker, experiment_id, parent_id, state, storage, progress, ray.put(data), archive, data_key
            )
            searched, unusable = _search_arms(run)
            for reason in unusable:
                progress.line(f"orchestrate: {reason}")
            confirmed, looks = confirm_arms(
                searched, run, judging=not unusable
            )  # no verdict without every arm: one round
            arms.extend(confirmed)
            if unusable:
                raise AllTrialsFailedError("no verdict: " + "; ".join(unusable))
        verdicts = judge_and_log(run, arms, looks)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        close_open_runs(
            tracker, state, parent_id, "KILLED" if interrupted else "FAILED", None if interrupted else _one_line(exc)
        )
        raise
    tracker.end_run(parent_id, "FINISHED")
    state.finish()
    return RunOutcome(plan, tracker.uri, parent_id, experiment_id, arms, verdicts)


def _one_line(exc: BaseException) -> str:
    """What failed, for the ``orchestrate.error`` tag: the exception's last line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:500]


@dataclass
class ArmSearch:
    """An arm on its way through the search: its MLflow run and trial setup, and, while
    its search is still to do, the trials reused from the archive and its request."""

    plan: ArmPlan
    arm_run: str
    setup: TrialSetup
    reused: list[TrialRecord] = field(default_factory=list)
    request: SearchRequest | None = None  # None: searched before an interruption
    identity: str = ""


def _search_arms(run: RunContext) -> tuple[list[SearchedArm], list[str]]:
    """Every arm's search in one Tuner (``tuning.run_searches``), then each arm's winner.
    An arm whose trials all failed is reported, not raised: the other arms' trials are
    not wasted (their confirmation still runs)."""
    from orchestrator.execute.tuning import run_searches

    plan, state, archive = run.plan, run.state, run.archive
    run_name = f"{plan.name}--{plan.profile}--{run.parent_id[:8]}"
    arms = [_prepare_arm(arm_plan, run) for arm_plan in plan.arms]
    pending = [a for a in arms if a.request is not None]
    found = run_searches(
        [a.request for a in pending if a.request], plan.search, run.data_ref, run.storage, f"{run_name}--search"
    )
    for a in pending:
        # a resumed search may hold a trial twice (reused from the archive, which it fed,
        # and recorded again): the recorder's record wins, it is this run's own
        trials = list({t.trial_id: t for t in [*a.reused, *found.get(a.plan.arm, [])]}.values())
        state.finish_search(a.plan.arm, trials)
        run.progress.phase(search_finished(a.plan.arm, trials))
        if archive:
            archive.add(a.identity, trials)
    searched, unusable = [], []
    for a in arms:
        try:
            trials, best, reason = pick_winner(run.tracker, state, a.plan, a.arm_run)
        except AllTrialsFailedError as exc:
            unusable.append(str(exc))
            continue
        searched.append(SearchedArm(a.plan, a.arm_run, a.setup, trials, best, reason, run_name))
    return searched, unusable


def _prepare_arm(arm_plan: ArmPlan, run: RunContext) -> ArmSearch:
    """The arm's MLflow run (created once), its trial setup and, unless its search is
    done, the trials it reuses and the request for new ones."""
    from orchestrator.execute.tuning import SearchRequest

    plan, tracker, state, progress, archive = run.plan, run.tracker, run.state, run.progress, run.archive
    arm = arm_plan.arm
    arm_run = open_arm_run(run, arm_plan)
    setup = _trial_setup(run.plan, arm_plan)
    if state.search_finished(arm):
        return ArmSearch(arm_plan, arm_run, setup)
    if state.searched_without_result(arm):  # every trial failed last time: search it again
        state.reopen_search(arm)
        tracker.delete_tag(arm_run, "orchestrate.error")  # the earlier verdict on the arm, no longer true
        progress.line(f"{arm}: every trial failed in the earlier run; searching it again")
    close_stale(tracker, state.trial_runs(arm, RunKind.TRIAL))
    arm_progress = progress.arm(
        arm, "search", arm_plan.trials, arm_plan.primary_metric, arm_plan.primary_mode, tuple(arm_plan.objectives)
    )
    progress.phase(f"[{arm}] search started: {arm_plan.trials} trials")
    identity = search_identity(run.plan, arm_plan, run.data_key)
    tags = base_tags(run.plan, arm_plan)
    prior: list[TrialRecord] = []
    if archive:
        archived = archive.load(identity)
        for skipped in archived.skipped:  # damaged lines: named, never reused
            progress.warn(skipped)
        prior = archived.records[: arm_plan.trials]
    reused = [log_reused_trial(run, arm_run, replace(record, arm=arm), tags, arm_progress) for record in prior]
    if reused:
        new_trials = max(0, arm_plan.trials - len(reused))
        progress.line(f"{arm}: {len(reused)} finished trials reused from earlier runs; {new_trials} new")
    name_params = [k for k in arm_plan.params if k not in arm_plan.fixed]
    recorder = TrialRecorder(
        tracker,
        run.experiment_id,
        arm_run,
        arm,
        RunKind.TRIAL,
        plan.training.epochs,
        arm_plan.constraints,
        state,
        arm_progress,
        tags,
        name_params,
        timeout_s=plan.search.trial_timeout_s,
        on_finished=(lambda record: archive.add(identity, [record])) if archive else None,
    )
    return ArmSearch(arm_plan, arm_run, setup, reused, SearchRequest(arm_plan, setup, recorder, prior), identity)


def _trial_setup(plan: Plan, arm_plan: ArmPlan) -> TrialSetup:
    """What every trial of the arm trains with besides its sampled parameters."""
    return TrialSetup(
        arm=arm_plan.arm,
        method=arm_plan.method,
        model=plan.task.model,
        metric=plan.task.metric,
        training=plan.training,
        fixed=dict(arm_plan.fixed),
        target_modules=plan.task.target_modules,
        threads=max(1, int(plan.search.resources.cpu)),
        constraints=tuple(arm_plan.constraints),
        timeout_s=plan.search.trial_timeout_s,
        memory_limit_mb=plan.search.trial_memory_mb,
        uses_bitsandbytes=get_method(arm_plan.method).needs("bitsandbytes"),
    )
