"""Plan -> search every arm -> confirm the winners -> judge. The driver's whole job.

Every arm is searched in one Tuner (``tuning.run_searches``: a searcher and a scheduler
per arm behind one dispatcher, one set of worker processes for all); then every arm's
winner is confirmed, one Tuner per round of seeds (``execute.confirm``), with a look
of the judge after each round (``execute.looks``): only the arms of claims still open go
on to the next round. Without ``confirm.max_seeds`` that is one round and one look.

Each step is persisted in ``RunState`` as soon as it finishes, so a rerun of the same
command skips what is done: finished arms are not searched again, trials already in
MLflow are never logged twice, and runs a killed driver left RUNNING are closed as
KILLED before work resumes.
"""

from __future__ import annotations

import collections
import json
import platform
import subprocess
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from methods import get_method
from orchestrator.execute.archive import TrialArchive, search_identity
from orchestrator.execute.interrupts import catching_stop_requests
from orchestrator.execute.interrupts import install as install_stop_handlers
from orchestrator.execute.confirm import RunContext, SearchedArm, base_tags, confirm_arms, judge_and_log
from orchestrator.execute.progress import ArmProgress, Progress
from orchestrator.execute.recorder import TrialRecorder
from orchestrator.execute.run_lock import hold_run_lock
from orchestrator.execute.stale_runs import close_open_runs, close_stale, close_stale_children
from orchestrator.execute.state import RunState
from orchestrator.plan import ArmPlan, Plan
from orchestrator.results import COMPLETED, FAILED, INFEASIBLE, STOPPED, ArmOutcome, TrialRecord
from orchestrator.tracking import ARM, LEVEL, Tracker
from orchestrator.training import TrialSetup

if TYPE_CHECKING:
    from orchestrator.execute.tuning import SearchRequest

PACKAGES = ("torch", "transformers", "peft", "optuna", "optuna-integration", "botorch", "ray", "mlflow", "pydantic", "hypothesis-orchestrator")


class AllTrialsFailedError(RuntimeError):
    """Every trial of an arm failed: there is nothing to confirm or judge."""


@dataclass
class RunOptions:
    tracking_uri: str | None = None
    address: str | None = None
    storage_path: str | None = None
    state_dir: Path = Path(".orchestrate")
    fresh: bool = False
    quiet: bool = False
    report_dir: Path | None = None  # default: reports/<name>-<run id>


@dataclass
class RunOutcome:
    plan: Plan
    parent_run_id: str
    experiment_id: str
    arms: list[ArmOutcome]
    verdicts: list[Any] = field(default_factory=list)
    report_path: Path | None = None


def run_plan(plan: Plan, options: RunOptions) -> RunOutcome:
    """Search, confirm and judge ``plan``, holding the run lock of its hypothesis and
    profile in the state folder (``run_lock``): a second run of the same refuses with
    ``RunLockedError`` before MLflow or Ray are touched."""
    with hold_run_lock(options.state_dir.resolve(), plan.hypothesis.name, plan.profile):
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

    h = plan.hypothesis
    state_dir = options.state_dir.resolve()
    tracker = Tracker(options.tracking_uri)
    state = RunState.open(state_dir / "state", h.name, plan.profile, plan.spec_sha256, options.fresh)
    progress = Progress(options.quiet)
    data = prepare_task(h.task, Path(plan.spec_path).parent, state_dir / "cache", warn=progress.warn)
    data_key = cache_key(h.task, Path(plan.spec_path).parent)
    experiment_id = tracker.experiment_id(h.name)
    parent_id = _parent_run(tracker, experiment_id, plan, state)
    storage = options.storage_path or str(state_dir / "ray")
    archive = TrialArchive(state_dir / "archive") if h.search.reuse_trials and not options.fresh else None
    arms: list[ArmOutcome] = []
    try:
        _describe_parent(tracker, parent_id, plan)
        with catching_stop_requests(), ray_session(options.address) as where, progress:
            import ray

            install_stop_handlers()  # again: ray.init replaced our SIGTERM handler with its own
            progress.line(f"{h.name} [{plan.profile}] on {where}; MLflow {tracker.uri} run {parent_id}")
            data_ref = ray.put(data)
            searched, unusable = _search_arms(plan, tracker, experiment_id, parent_id, state, storage, progress, archive, data_key, data_ref)
            for reason in unusable:
                progress.line(f"orchestrate: {reason}")
            run = RunContext(plan, tracker, experiment_id, parent_id, state, storage, progress, data_ref)
            confirmed, looks = confirm_arms(searched, run, judging=not unusable)  # no verdict without every arm: one round
            arms.extend(confirmed)
            if unusable:
                raise AllTrialsFailedError("no verdict: " + "; ".join(unusable))
        verdicts = judge_and_log(plan, arms, looks, tracker, parent_id)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        close_open_runs(tracker, state, parent_id, "KILLED" if interrupted else "FAILED", None if interrupted else _one_line(exc))
        raise
    tracker.end_run(parent_id, "FINISHED")
    state.set(finished=True)
    return RunOutcome(plan, parent_id, experiment_id, arms, verdicts, _report(tracker, parent_id, options, progress))


def _one_line(exc: BaseException) -> str:
    """What failed, for the ``orchestrate.error`` tag: the exception's last line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:500]


def _report(tracker: Tracker, parent_id: str, options: RunOptions, progress: Progress) -> Path | None:
    """The report is written from MLflow alone, after the run is closed; a plotting
    error must not turn a finished run into a failed one."""
    from orchestrator.report import write_report

    try:
        return write_report(tracker.uri, parent_id, options.report_dir)
    except Exception as exc:  # noqa: BLE001
        progress.line(f"report not written ({type(exc).__name__}: {exc}); run `orchestrate report {parent_id}`")
        return None


def _parent_run(tracker: Tracker, experiment_id: str, plan: Plan, state: RunState) -> str:
    """The hypothesis's MLflow run, created once: its id is saved before anything is
    logged to it, so a kill in between leaves a run that the next start completes,
    not an orphan beside a second parent."""
    existing = state.get("parent_run_id")
    if existing and tracker.run_status(existing) is not None:
        tracker.reopen_run(existing)
        tracker.set_tags(existing, {"orchestrate.resumed": "true"})
        tracker.delete_tag(existing, "orchestrate.error")  # why the earlier attempt failed; this one goes on
        return existing
    h = plan.hypothesis
    tags = {
        LEVEL: "hypothesis", "orchestrate.hypothesis": h.name, "orchestrate.profile": plan.profile,
        "orchestrate.spec_sha256": plan.spec_sha256, "orchestrate.spec_file": plan.spec_path,
        "orchestrate.git_commit": _git_commit(plan.spec_path), "mlflow.note.content": h.statement,
    }
    run_id = tracker.start_run(experiment_id, f"{h.name} [{plan.profile}]", tags)
    state.set(parent_run_id=run_id, experiment_id=experiment_id)
    return run_id


def _describe_parent(tracker: Tracker, run_id: str, plan: Plan) -> None:
    """The spec, the plan and the claims on the hypothesis's run, once (a resumed run
    that a kill caught before its description was complete gets it now)."""
    if "profile" in tracker.get_run(run_id).data.params:
        return
    h = plan.hypothesis
    tracker.log_text(run_id, Path(plan.spec_path).read_text(), f"spec/{Path(plan.spec_path).name}")
    tracker.log_text(run_id, json.dumps(plan.to_dict(), indent=1, default=str), "plan.json")
    tracker.log_text(run_id, "\n".join(plan.claims), "expected.txt")
    tracker.log_params(run_id, {  # last: its presence says the description is complete
        "profile": plan.profile, "sampler": h.search.sampler, "trials_per_arm": h.search.trials_per_arm,
        "confirm_seeds": h.confirm.seeds, "confirm_split": h.confirm.split, "confidence": h.judge.confidence,
        "arms": ",".join(h.arms), "task_model": h.task.model, "task_dataset": h.task.dataset,
        **{f"version.{name}": version for name, version in _versions().items()},
    })


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


def _search_arms(plan: Plan, tracker: Tracker, experiment_id: str, parent_id: str, state: RunState, storage: str, progress: Progress,
                 archive: TrialArchive | None, data_key: str, data_ref: Any) -> tuple[list[SearchedArm], list[str]]:
    """Every arm's search in one Tuner (``tuning.run_searches``), then each arm's winner.
    An arm whose trials all failed is reported, not raised: the other arms' trials are
    not wasted (their confirmation still runs)."""
    from orchestrator.execute.tuning import run_searches

    run_name = f"{plan.hypothesis.name}--{plan.profile}--{parent_id[:8]}"
    arms = [_prepare_arm(arm_plan, plan, tracker, experiment_id, parent_id, state, progress, archive, data_key) for arm_plan in plan.arms]
    pending = [a for a in arms if a.request is not None]
    found = run_searches([a.request for a in pending if a.request], data_ref, storage, f"{run_name}--search", plan.hypothesis.search.seed)
    for a in pending:
        # a resumed search may hold a trial twice (reused from the archive, which it fed,
        # and recorded again): the recorder's record wins, it is this run's own
        trials = list({t.trial_id: t for t in [*a.reused, *found.get(a.plan.arm, [])]}.values())
        state.set_arm(a.plan.arm, search_done=True, trials=[asdict(t) for t in trials])
        if archive:
            archive.add(a.identity, trials)
    searched, unusable = [], []
    for a in arms:
        try:
            searched.append(_pick_winner(a, tracker, state, run_name))
        except AllTrialsFailedError as exc:
            unusable.append(str(exc))
    return searched, unusable


def _prepare_arm(arm_plan: ArmPlan, plan: Plan, tracker: Tracker, experiment_id: str, parent_id: str, state: RunState, progress: Progress,
                 archive: TrialArchive | None, data_key: str) -> ArmSearch:
    """The arm's MLflow run (created once), its trial setup and, unless its search is
    done, the trials it reuses and the request for new ones."""
    from orchestrator.execute.tuning import SearchRequest

    h = plan.hypothesis
    arm = arm_plan.arm
    arm_state = state.arm(arm)
    arm_run = arm_state.get("arm_run_id")
    arm_params = {"method": arm_plan.method, **{f"fixed.{k}": v for k, v in arm_plan.fixed.items()}, "space": arm_plan.space_file or "-"}
    if not arm_run or tracker.run_status(arm_run) is None:
        arm_run = tracker.start_run(experiment_id, f"{arm} ({arm_plan.method})", {LEVEL: "arm", ARM: arm, "orchestrate.method": arm_plan.method}, parent_id)
        state.set_arm(arm, arm_run_id=arm_run)  # first: a kill now leaves no orphan
    else:
        close_stale_children(tracker, experiment_id, arm_run)
        tracker.reopen_run(arm_run)
    tracker.log_params(arm_run, arm_params)  # again on a resume: the same values (a kill may have come before them)
    setup = TrialSetup(
        arm=arm, method=arm_plan.method, model=h.task.model, metric=h.task.metric, training=h.training,
        fixed=dict(arm_plan.fixed), target_modules=h.task.target_modules, threads=max(1, int(arm_plan.resources.cpu)),
        constraints=tuple(arm_plan.constraints), timeout_s=h.search.trial_timeout_s, memory_limit_mb=h.search.trial_memory_mb,
        uses_bitsandbytes=get_method(arm_plan.method).needs("bitsandbytes"),
    )
    if state.search_finished(arm):
        return ArmSearch(arm_plan, arm_run, setup)
    if state.searched_without_result(arm):  # every trial failed last time: search it again
        state.reopen_search(arm)
        tracker.delete_tag(arm_run, "orchestrate.error")  # the earlier verdict on the arm, no longer true
        progress.line(f"{arm}: every trial failed in the earlier run; searching it again")
    close_stale(tracker, state.trial_runs(arm, "trial"))
    arm_progress = progress.arm(arm, "search", arm_plan.trials, arm_plan.primary_metric, arm_plan.primary_mode)
    identity = search_identity(plan, arm_plan, data_key)
    tags = base_tags(plan, arm_plan)
    prior: list[TrialRecord] = []
    if archive:
        archived = archive.load(identity)
        for skipped in archived.skipped:  # damaged lines: named, never reused
            progress.warn(skipped)
        prior = archived.records[: arm_plan.trials]
    reused = [_log_reused(tracker, experiment_id, arm_run, state, replace(record, arm=arm), tags, arm_progress) for record in prior]
    if reused:
        progress.line(f"{arm}: {len(reused)} finished trials reused from earlier runs; {max(0, arm_plan.trials - len(reused))} new")
    name_params = [k for k in arm_plan.params if k not in arm_plan.fixed]
    recorder = TrialRecorder(tracker, experiment_id, arm_run, arm, "trial", h.training.epochs, arm_plan.constraints, state,
                             arm_progress, tags, name_params, timeout_s=h.search.trial_timeout_s,
                             on_finished=(lambda record: archive.add(identity, [record])) if archive else None)
    return ArmSearch(arm_plan, arm_run, setup, reused, SearchRequest(arm_plan, setup, recorder, prior), identity)


def _pick_winner(a: ArmSearch, tracker: Tracker, state: RunState, run_name: str) -> SearchedArm:
    """The arm's best trial (``select_best``), its Pareto front when it has several
    objectives, and the arm's run told both."""
    arm, arm_plan, arm_run = a.plan.arm, a.plan, a.arm_run
    trials = [TrialRecord(**t) for t in state.arm(arm)["trials"]]
    if len(arm_plan.objectives) > 1:
        _log_pareto_front(tracker, arm_run, arm, trials, arm_plan)
    best, reason = select_best(trials, arm_plan)
    if best is None:
        tracker.set_tags(arm_run, {"orchestrate.error": reason})
        tracker.log_metrics(arm_run, _count_metrics(trials))
        tracker.end_run(arm_run, "FAILED")
        raise AllTrialsFailedError(f"arm {arm!r}: {reason}")
    tracker.set_tags(arm_run, {"orchestrate.best_trial": best.trial_id, "orchestrate.best_reason": reason, "orchestrate.best_run": best.mlflow_run_id or ""})
    tracker.log_metrics(arm_run, {f"best_{k}": v for k, v in best.metrics.items()} | _count_metrics(trials))
    tracker.log_params(arm_run, {f"best.{k}": v for k, v in best.params.items()})
    return SearchedArm(arm_plan, arm_run, a.setup, trials, best, reason, run_name)


def _log_reused(tracker: Tracker, experiment_id: str, arm_run: str, state: RunState, prior: TrialRecord, base_tags: dict[str, str], progress: ArmProgress) -> TrialRecord:
    """An archived trial (possibly of another hypothesis's arm with the same search)
    as a trial run of this search, once even across resumes: its parameters, final
    metrics and status, and the run it came from."""
    run_id = state.trial_run(prior.arm, "trial", prior.trial_id)
    status = tracker.run_status(run_id) if run_id else None
    if status is None:
        tags = {**base_tags, LEVEL: "trial", ARM: prior.arm, "orchestrate.trial_id": prior.trial_id, "orchestrate.status": prior.status,
                "orchestrate.reused_from": prior.reused_from or prior.mlflow_run_id or ""}
        run_id = tracker.start_run(experiment_id, f"{prior.arm} reused {prior.trial_id}", tags, parent_id=arm_run)
        state.set_trial_run(prior.arm, "trial", prior.trial_id, run_id)
    if status != "FINISHED":  # new, or killed before it was complete: params are idempotent, metrics the same values
        tracker.set_tags(run_id, {"orchestrate.status": prior.status})  # not the KILLED that closing a stale run set
        tracker.log_params(run_id, prior.params | prior.runtime)
        tracker.log_metrics(run_id, {k: v for k, v in prior.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        tracker.end_run(run_id, "FINISHED")
    progress.done += 1
    if prior.status == STOPPED:
        progress.stopped += 1
    progress.offer(prior.metrics.get(progress.metric))
    return replace(prior, mlflow_run_id=run_id, reused_from=prior.reused_from or prior.mlflow_run_id)


def _log_pareto_front(tracker: Tracker, arm_run: str, arm: str, trials: list[TrialRecord], plan: ArmPlan) -> None:
    """The arm's non-dominated finished feasible trials: tagged, tabled, plotted.

    With no feasible trial, the front of the trained infeasible ones is logged instead
    (tag ``orchestrate.pareto=infeasible``, ``"feasible": false`` in the table): how far
    the arm is from its budget is what the researcher needs to see then.
    """
    import tempfile

    from orchestrator.pareto import pareto_indices, plot_front

    names, modes = list(plan.objectives), list(plan.objectives.values())

    def measured(t: TrialRecord) -> bool:
        return all(isinstance(t.metrics.get(n), (int, float)) for n in names) and not t.metrics.get("infeasible_before_training")

    pool = [t for t in trials if t.status == COMPLETED and measured(t)]
    feasible = bool(pool)
    if not feasible:
        pool = [t for t in trials if t.status == INFEASIBLE and measured(t)]
    if not pool:
        return
    points = [[float(t.metrics[n]) for n in names] for t in pool]
    front = pareto_indices(points, modes)
    rows = [{"trial_id": pool[i].trial_id, "run_id": pool[i].mlflow_run_id, "feasible": feasible, **dict(zip(names, points[i])), "params": pool[i].params} for i in front]
    for i in front:
        if pool[i].mlflow_run_id:
            tracker.set_tags(pool[i].mlflow_run_id, {"orchestrate.pareto": "true" if feasible else "infeasible"})
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
        return float(value) if isinstance(value, (int, float)) and value == value else float("-inf") if mode == "max" else float("inf")

    pick = max if mode == "max" else min
    for statuses, reason in (
        ((COMPLETED,), f"best {metric} ({mode}) among finished feasible trials"),
        ((INFEASIBLE,), f"NO feasible trial: best {metric} among finished trials that violate {', '.join(map(str, plan.constraints))}"),
        ((STOPPED,), f"no trial finished all epochs: best {metric} among early-stopped trials"),
    ):
        pool = [t for t in trials if t.status in statuses and metric in t.metrics]
        if pool:
            return pick(pool, key=key), reason
    errors = collections.Counter((t.error or "unknown").strip().splitlines()[-1] for t in trials if t.status == FAILED)
    cause = errors.most_common(1)[0][0] if errors else "no trial reported"
    return None, f"all {len(trials)} trials failed; commonest cause ({errors.most_common(1)[0][1] if errors else 0}x): {cause}"


def _count_metrics(trials: list[TrialRecord]) -> dict[str, float]:
    counts = collections.Counter(t.status for t in trials)
    return {"trials_completed": counts[COMPLETED], "trials_failed": counts[FAILED], "trials_stopped": counts[STOPPED], "trials_infeasible": counts[INFEASIBLE]}


def _git_commit(spec_path: str) -> str:
    """The commit of the repository holding the hypothesis file (the run may start elsewhere)."""
    try:
        folder = str(Path(spec_path).resolve().parent)
        out = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
