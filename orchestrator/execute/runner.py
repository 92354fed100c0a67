"""Plan -> search every arm -> confirm the winners -> judge. The driver's whole job.

Every arm is searched in one Tuner (``tuning.run_searches``: a searcher and a scheduler
per arm behind one dispatcher, one set of worker processes for all); then every arm's
winner is confirmed, one Tuner per round of seeds (``tuning.run_confirm``), with a look
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
from orchestrator.execute.looks import JudgeSettings, Look, round_of, take_look
from orchestrator.execute.progress import ArmProgress, Progress
from orchestrator.execute.recorder import TrialRecorder
from orchestrator.execute.state import RunState
from orchestrator.plan import ArmPlan, Plan
from orchestrator.results import COMPLETED, FAILED, INFEASIBLE, STOPPED, ArmOutcome, TrialRecord
from orchestrator.tracking import ARM, LEVEL, Tracker
from orchestrator.training import TrialSetup

if TYPE_CHECKING:
    from orchestrator.execute.tuning import ConfirmRound, SearchRequest
    from orchestrator.judge import Verdict

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
    from orchestrator.execute.ray_session import ray_session
    from orchestrator.tasks.prepare import cache_key, prepare_task

    h = plan.hypothesis
    tracker = Tracker(options.tracking_uri)
    experiment_id = tracker.experiment_id(h.name)
    state_dir = options.state_dir.resolve()
    state = RunState.open(state_dir / "state", h.name, plan.profile, plan.spec_sha256, options.fresh)
    parent_id = _parent_run(tracker, experiment_id, plan, state)
    storage = options.storage_path or str(state_dir / "ray")
    data = prepare_task(h.task, Path(plan.spec_path).parent, state_dir / "cache")
    data_key = cache_key(h.task, Path(plan.spec_path).parent)
    archive = TrialArchive(state_dir / "archive") if h.search.reuse_trials and not options.fresh else None
    arms: list[ArmOutcome] = []
    progress = Progress(options.quiet)
    try:
        with catching_stop_requests(), ray_session(options.address) as where, progress:
            import ray

            install_stop_handlers()  # again: ray.init replaced our SIGTERM handler with its own
            progress.line(f"{h.name} [{plan.profile}] on {where}; MLflow {tracker.uri} run {parent_id}")
            data_ref = ray.put(data)
            searched, unusable = _search_arms(plan, tracker, experiment_id, parent_id, state, storage, progress, archive, data_key, data_ref)
            for reason in unusable:
                progress.line(f"orchestrate: {reason}")
            run = RunContext(plan, tracker, experiment_id, parent_id, state, storage, progress, data_ref)
            confirmed, looks = _confirm_arms(searched, run, judging=not unusable)  # no verdict without every arm: one round
            arms.extend(confirmed)
            if unusable:
                raise AllTrialsFailedError("no verdict: " + "; ".join(unusable))
        verdicts = _judge(plan, arms, looks, tracker, parent_id)
    except BaseException as exc:
        _close_open_runs(tracker, state, parent_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    tracker.end_run(parent_id, "FINISHED")
    state.set(finished=True)
    return RunOutcome(plan, parent_id, experiment_id, arms, verdicts, _report(tracker, parent_id, options, progress))


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
        tracker.client.update_run(existing, status="RUNNING")
        tracker.set_tags(existing, {"orchestrate.resumed": "true"})
        if "profile" not in tracker.client.get_run(existing).data.params:  # killed before its description was logged
            _describe_parent(tracker, existing, plan)
        return existing
    h = plan.hypothesis
    tags = {
        LEVEL: "hypothesis", "orchestrate.hypothesis": h.name, "orchestrate.profile": plan.profile,
        "orchestrate.spec_sha256": plan.spec_sha256, "orchestrate.spec_file": plan.spec_path,
        "orchestrate.git_commit": _git_commit(plan.spec_path), "mlflow.note.content": h.statement,
    }
    run_id = tracker.start_run(experiment_id, f"{h.name} [{plan.profile}]", tags)
    state.set(parent_run_id=run_id, experiment_id=experiment_id)
    _describe_parent(tracker, run_id, plan)
    return run_id


def _describe_parent(tracker: Tracker, run_id: str, plan: Plan) -> None:
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
class SearchedArm:
    """An arm whose search is done: what its confirmation needs."""

    plan: ArmPlan
    arm_run: str
    setup: TrialSetup
    trials: list[TrialRecord]
    best: TrialRecord
    reason: str
    run_name: str


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
        _close_stale_children(tracker, experiment_id, arm_run)
        tracker.client.update_run(arm_run, status="RUNNING")
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
    _close_stale(tracker, state.trial_runs(arm, "trial"))
    arm_progress = progress.arm(arm, "search", arm_plan.trials, arm_plan.primary_metric, arm_plan.primary_mode)
    identity = search_identity(plan, arm_plan, data_key)
    base_tags = _base_tags(plan, arm_plan)
    prior = archive.load(identity)[: arm_plan.trials] if archive else []
    reused = [_log_reused(tracker, experiment_id, arm_run, state, replace(record, arm=arm), base_tags, arm_progress) for record in prior]
    if reused:
        progress.line(f"{arm}: {len(reused)} finished trials reused from earlier runs; {max(0, arm_plan.trials - len(reused))} new")
    name_params = [k for k in arm_plan.params if k not in arm_plan.fixed]
    recorder = TrialRecorder(tracker, experiment_id, arm_run, arm, "trial", h.training.epochs, arm_plan.constraints, state,
                             arm_progress, base_tags, name_params, timeout_s=h.search.trial_timeout_s,
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


def _base_tags(plan: Plan, arm_plan: ArmPlan) -> dict[str, str]:
    return {"orchestrate.hypothesis": plan.hypothesis.name, "orchestrate.method": arm_plan.method}


@dataclass
class RunContext:
    """What the steps of one run share: its plan, where it logs (MLflow, the hypothesis
    run) and persists (run state, Ray's storage), the live display and the task's data."""

    plan: Plan
    tracker: Tracker
    experiment_id: str
    parent_id: str
    state: RunState
    storage: str
    progress: Progress
    data_ref: Any


def _confirm_arms(searched: list[SearchedArm], run: RunContext, judging: bool) -> tuple[list[ArmOutcome], list[Look]]:
    """Every searched arm's winner on fresh seeds, round after round, with a look of the
    judge after each (``judging``: else one round and no look); then the arm runs close.

    A round and a look, once in the run state, are never repeated: a rerun after a kill
    starts from the first round an arm has not finished (its Tuner restored when the kill
    came during it) or from the look not yet taken."""
    from orchestrator.execute.tuning import ConfirmRound

    settings = _judge_settings(run.plan)
    by_arm = {s.plan.arm: s for s in searched}
    looks = [Look.from_dict(look).in_order(by_arm) for look in run.state.looks()]
    if looks:  # a kill may have come between saving a look and logging it
        _log_looks(run.tracker, run.parent_id, looks)
    in_round = list(by_arm)
    for index, seeds in enumerate(settings.rounds if judging else settings.rounds[:1], 1):
        if index > 1:
            in_round = [arm for arm in looks[index - 2].continuing if arm in by_arm]
            if not in_round:
                break
        _confirm_round(ConfirmRound(index, seeds), [by_arm[arm] for arm in in_round], run)
        if judging and len(looks) < index:
            runs = {arm: [TrialRecord(**t) for t in run.state.confirm_records(arm)] for arm in by_arm}
            looks.append(take_look(settings, runs, index, looks[-1] if looks else None, run.tracker))
            run.state.add_look(looks[-1].to_dict())
            _log_looks(run.tracker, run.parent_id, looks)
            run.progress.line(_look_line(looks[-1]))
    outcomes = []
    for s in searched:
        arm = s.plan.arm
        confirm = [TrialRecord(**t) for t in run.state.confirm_records(arm)]
        finished = [c for c in confirm if c.status != FAILED]
        rounds = len({round_of(c.seed, settings.rounds) for c in confirm})
        run.tracker.log_metrics(s.arm_run, {"confirm_runs": len(finished), "confirm_failed": len(confirm) - len(finished), "confirm_rounds": rounds})
        run.tracker.end_run(s.arm_run, "FINISHED")
        outcomes.append(ArmOutcome(arm, s.plan.method, s.trials, s.best, s.reason, confirm))
    return outcomes, looks


def _judge_settings(plan: Plan) -> JudgeSettings:
    """The run's claims and judge settings, the same at every look."""
    from orchestrator.judge import evidence

    h = plan.hypothesis
    exact = evidence.exact_metrics_of({arm.arm: arm.method for arm in plan.arms})
    return JudgeSettings(list(plan.claims), plan.confirm_rounds, h.judge.confidence, h.judge.family_wise, exact)


def _confirm_round(confirm_round: "ConfirmRound", arms: list[SearchedArm], run: RunContext) -> None:
    """One round's seeds for the arms in it that have not run them yet, in one Tuner."""
    from orchestrator.execute.tuning import ConfirmRequest, run_confirm

    h, tracker, state = run.plan.hypothesis, run.tracker, run.state
    phase = "confirm" if confirm_round.index == 1 else f"confirm {confirm_round.index}"
    requests = []
    for s in arms:
        arm = s.plan.arm
        if state.confirm_round_done(arm, confirm_round.index):
            continue
        _close_stale(tracker, state.trial_runs(arm, "confirm"))
        recorder = TrialRecorder(tracker, run.experiment_id, s.arm_run, arm, "confirm", h.training.epochs, [], state,
                                 run.progress.arm(arm, phase, len(confirm_round.seeds), f"test_{h.task.metric}", "max"),
                                 _base_tags(run.plan, s.plan) | {"orchestrate.confirm_split": h.confirm.split}, [], static_params=dict(s.best.params),
                                 timeout_s=h.search.trial_timeout_s)
        requests.append(ConfirmRequest(s.plan, s.setup, s.best.params, recorder))
    run_name = arms[0].run_name if arms else ""
    confirmed = run_confirm(requests, confirm_round, h.confirm.split, run.data_ref, run.storage, run_name)
    for arm, records in confirmed.items():
        state.finish_confirm_round(arm, confirm_round.index, [asdict(t) for t in records])


def _log_looks(tracker: Tracker, parent_id: str, looks: list[Look]) -> None:
    """Every look so far on the hypothesis run: ``looks.json`` (seeds per arm, alpha,
    verdicts, the arms that went on), a tag per look and the count ``confirm_looks``."""
    tracker.log_text(parent_id, json.dumps([look.to_dict() for look in looks], indent=1, default=str), "looks.json")
    tracker.set_tags(parent_id, {f"look.{look.index}": _look_line(look) for look in looks})
    tracker.log_metrics(parent_id, {"confirm_looks": len(looks)}, step=len(looks))


def _look_line(look: Look) -> str:
    """'look 1 (small=2, large=2 seeds; alpha 0.031): #1 SUPPORTED; go on: large'."""
    seeds = ", ".join(f"{arm}={len(s)}" for arm, s in look.seeds.items())
    settled = ", ".join(f"#{number} {v.verdict}" for number, v in look.settled_here()) or "nothing settled"
    after = "go on: " + ", ".join(look.continuing) if look.continuing else "no arm goes on"
    return f"look {look.index} ({seeds} seeds; alpha {look.alpha:.3g}): {settled}; {after}"


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
        path = plot_front(points, front, names, modes, title, Path(folder) / "pareto_front.png")
        tracker.client.log_artifact(arm_run, str(path))
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


def _judge(plan: Plan, arms: list[ArmOutcome], looks: list[Look], tracker: Tracker, parent_id: str) -> list["Verdict"]:
    """The run's verdicts are its last look's (``take_look`` judged them: a failed seed is
    passed on, its claims INCONCLUSIVE, never judged on the survivors, and so are the
    metrics each arm's method fixes, the only ones a zero spread may compare exactly);
    logged with every confirmation value and every look."""
    from orchestrator.judge import evidence

    runs_by_arm = {outcome.arm: outcome.confirm for outcome in arms}
    samples, failed = evidence.confirmation_samples(runs_by_arm), evidence.failed_seeds(runs_by_arm)
    exact = evidence.exact_metrics_of({arm.arm: arm.method for arm in plan.arms})
    verdicts = looks[-1].verdicts if looks else []
    tags, metrics = {}, {}
    for index, verdict in enumerate(verdicts):
        tags[f"verdict.{index}"] = f"{verdict.verdict}: {verdict.claim}"
        metrics[f"claim_{index}_estimate"] = verdict.estimate
        metrics[f"claim_{index}_ci_low"] = verdict.ci_low
        metrics[f"claim_{index}_ci_high"] = verdict.ci_high
        metrics[f"claim_{index}_supported"] = 1.0 if verdict.verdict == "SUPPORTED" else 0.0
    tracker.set_tags(parent_id, tags)
    tracker.log_metrics(parent_id, {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v == v})
    logged = {"samples": samples, "failed": failed, "exact_metrics": {arm: sorted(names) for arm, names in exact.items()},
              "verdicts": [v.model_dump() for v in verdicts], "looks": [look.to_dict() for look in looks]}
    tracker.log_text(parent_id, json.dumps(logged, indent=1, default=str), "verdicts.json")
    return verdicts


def _count_metrics(trials: list[TrialRecord]) -> dict[str, float]:
    counts = collections.Counter(t.status for t in trials)
    return {"trials_completed": counts[COMPLETED], "trials_failed": counts[FAILED], "trials_stopped": counts[STOPPED], "trials_infeasible": counts[INFEASIBLE]}


def _close_stale(tracker: Tracker, runs: dict[str, str]) -> None:
    """Runs a killed driver left RUNNING are closed as KILLED (their trials rerun)."""
    for run_id in runs.values():
        if tracker.run_status(run_id) == "RUNNING":
            tracker.set_tags(run_id, {"orchestrate.status": "KILLED"})
            tracker.end_run(run_id, "KILLED")


def _close_stale_children(tracker: Tracker, experiment_id: str, parent_id: str) -> None:
    """Also the runs a SIGKILL caught between creating them and saving the state:
    found in MLflow itself, as RUNNING children of the arm run."""
    stale = tracker.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'")
    _close_stale(tracker, {run.info.run_id: run.info.run_id for run in stale})


def _close_open_runs(tracker: Tracker, state: RunState, parent_id: str, status: str) -> None:
    """On a stop or a failure: every run of this hypothesis still RUNNING is closed,
    also a trial's run that the stop caught between its creation and its entry in the
    run state (found in MLflow as a child of its arm's run)."""
    try:
        for arm in state.data.get("arms", {}).values():
            _close_stale(tracker, arm.get("trial", {}))
            _close_stale(tracker, arm.get("confirm", {}))
            if arm.get("arm_run_id") and state.get("experiment_id"):
                _close_stale_children(tracker, state.get("experiment_id"), arm["arm_run_id"])
            if arm.get("arm_run_id") and tracker.run_status(arm["arm_run_id"]) == "RUNNING":
                tracker.end_run(arm["arm_run_id"], status)
        if tracker.run_status(parent_id) == "RUNNING":
            tracker.end_run(parent_id, status)
    except Exception:  # never mask the original interruption
        pass


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
