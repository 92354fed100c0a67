"""MLflow -> ``RunSummary``: everything a report or a re-judgement needs, read back.

A finished ``orchestrate run`` leaves a tree of MLflow runs (hypothesis -> arm ->
trial | confirm). This module reads that tree once into plain dataclasses, so the
plots, the renderer and the re-judge never touch MLflow themselves.

    >>> summary = collect_summary(Tracker("sqlite:///mlflow.db"), run_id)   # doctest: +SKIP
    >>> [arm.arm for arm in summary.arms], summary.verdicts[0].verdict      # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from orchestrator.results import COMPLETED, FAILED, STOPPED, RunKind, TrialStatus
from orchestrator.tracking import ARM, LEVEL

if TYPE_CHECKING:
    from orchestrator.execute.looks import Look
    from orchestrator.judge import Verdict
    from orchestrator.tracking import Tracker

STATUSES = tuple(TrialStatus)
_STATUS_VALUES = frozenset(status.value for status in TrialStatus)
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class ReportError(LookupError):
    """The hypothesis run asked for does not exist or cannot be read."""


@dataclass
class RunRecord:
    """One search trial or confirmation run as MLflow holds it."""

    run_id: str
    name: str
    arm: str
    kind: RunKind
    status: TrialStatus | str  # or the MLflow status (KILLED, RUNNING) of a run an interrupted driver left
    params: dict[str, str]
    metrics: dict[str, float]
    seed: int | None
    start_time: int
    error: str | None = None
    images: list[str] = field(default_factory=list)  # PNG artifact paths of the run
    # search trials: the arm's primary objective by epoch (what ASHA compared), for the diagnostics
    history: dict[int, float] = field(default_factory=dict)


@dataclass
class ArmSummary:
    arm: str
    method: str
    run_id: str
    best_run_id: str | None
    best_reason: str
    best_params: dict[str, str]
    fixed: dict[str, str]
    counts: dict[str, int]
    trials: list[RunRecord]
    confirms: list[RunRecord]
    images: list[str] = field(default_factory=list)  # PNGs of the arm run itself (e.g. pareto_front.png)

    def best_trial(self) -> RunRecord | None:
        return next((t for t in self.trials if t.run_id == self.best_run_id), None)

    def usable_confirms(self) -> list[RunRecord]:
        return [c for c in self.confirms if c.status != FAILED]


@dataclass
class PosthocJudgement:
    """A re-judgement with claims other than the registered ones (verdicts_posthoc.json)."""

    claims: list[str]
    registered_claims: list[str]
    spec_file: str
    judged_at: str
    confidence: float
    family_wise: bool | None
    verdicts: list[Verdict]


@dataclass
class RunSummary:
    run_id: str
    experiment_id: str
    hypothesis: str
    status: str
    statement: str
    source: str
    spec_file: str
    spec_sha256: str
    profile: str
    git_commit: str
    tracking_uri: str
    plan: dict[str, Any]
    claims: list[str]
    arms: list[ArmSummary]
    verdicts: list[Verdict]
    posthoc: PosthocJudgement | None = None
    looks: list[Look] = field(default_factory=list)  # sequential confirmation's looks (looks.json), in order

    @property
    def metric(self) -> str:
        return str(self.plan.get("task", {}).get("metric", "accuracy"))

    @property
    def confidence(self) -> float:
        return float(self.plan.get("judge", {}).get("confidence", 0.95))

    @property
    def family_wise(self) -> bool | None:
        return self.plan.get("judge", {}).get("family_wise")

    @property
    def confirm_split(self) -> str:
        return str(self.plan.get("confirm", {}).get("split", "test"))

    @property
    def confirm_rounds(self) -> list[list[int]]:
        """The seeds of each planned round of confirmation (``plan.confirm_rounds``), from
        the logged plan (one round for a plan logged before rounds existed)."""
        from orchestrator.plan import confirm_rounds
        from orchestrator.spec.models import ConfirmSpec

        confirm = self.plan.get("confirm") or {}
        return confirm_rounds(
            ConfirmSpec.model_validate({k: v for k, v in confirm.items() if k in ConfirmSpec.model_fields})
        )

    def objectives(self) -> dict[str, str]:
        arms = self.plan.get("arms") or [{}]
        return dict(arms[0].get("objectives") or {f"val_{self.metric}": "max"})

    def arm(self, name: str) -> ArmSummary:
        return next(a for a in self.arms if a.arm == name)


# -- artifacts ----------------------------------------------------------------------------
def download_artifact(tracker: Tracker, run_id: str, path: str, folder: Path) -> Path:
    """Kept for ``orchestrator.report``'s import: ``Tracker.download_artifact``."""
    return tracker.download_artifact(run_id, path, folder)


def image_paths(tracker: Tracker, run_id: str, folder: str | None = None, depth: int = 0) -> list[str]:
    """PNG artifacts of a run, walking sub-folders (a method may nest its plots)."""
    found: list[str] = []
    for entry in tracker.list_artifacts(run_id, folder):
        if entry.is_dir and depth < 4:
            found.extend(image_paths(tracker, run_id, entry.path, depth + 1))
        elif entry.path.lower().endswith(".png"):
            found.append(entry.path)
    return found


# -- resolving what the user named --------------------------------------------------------
def resolve_hypothesis_run(tracker: Tracker, target: str) -> str:
    """A run id (any run of the tree: walks up to its hypothesis run), or a hypothesis
    name: the newest FINISHED hypothesis-level run of that experiment."""
    if _RUN_ID.match(target):
        try:
            run = tracker.get_run(target)
        except Exception:
            run = None
        if run is not None:
            for _ in range(4):
                if run.data.tags.get(LEVEL) == "hypothesis":
                    return run.info.run_id
                parent = run.data.tags.get("mlflow.parentRunId")
                if not parent:
                    break
                run = tracker.get_run(parent)
            raise ReportError(f"run {target} is not part of an orchestrate hypothesis run")
    experiment = tracker.experiment_by_name(target)
    if experiment is None:
        raise ReportError(
            f"no hypothesis (MLflow experiment) named {target!r} and no run with that id in {tracker.uri}"
        )
    runs = tracker.search_runs([experiment.experiment_id], "tags.`orchestrate.level` = 'hypothesis'")
    finished = sorted(
        (r for r in runs if r.info.status == "FINISHED"), key=lambda r: r.info.start_time or 0, reverse=True
    )
    if finished:
        return finished[0].info.run_id
    others = ", ".join(f"{r.info.run_id} ({r.info.status})" for r in runs) or "none"
    raise ReportError(
        f"hypothesis {target!r} has no FINISHED run in {tracker.uri} (runs: {others});"
        " pass a run id to report an unfinished one"
    )


# -- reading the tree -------------------------------------------------------------------
def collect_summary(tracker: Tracker, run_id: str, with_images: bool = True, with_history: bool = True) -> RunSummary:
    """Read one hypothesis run and its whole tree from MLflow; ``with_images``: the PNG
    artifacts' paths, ``with_history``: each search trial's objective by epoch (one more
    call per trial; the report's diagnostics use it)."""
    from orchestrator.execute.looks import Look
    from orchestrator.judge import Verdict

    parent = tracker.get_run(run_id)
    tags, params = parent.data.tags, parent.data.params
    if tags.get(LEVEL) != "hypothesis":
        raise ReportError(f"run {run_id} is a {tags.get(LEVEL, 'non-orchestrate')} run, not a hypothesis run")
    experiment_id = parent.info.experiment_id
    plan = json.loads(tracker.read_text(run_id, "plan.json") or "{}")
    expected = tracker.read_text(run_id, "expected.txt")
    claims = (
        [line.strip() for line in (expected or "").splitlines() if line.strip()]
        if expected is not None
        else list(plan.get("expected", []))
    )
    logged = json.loads(tracker.read_text(run_id, "verdicts.json") or "{}")
    looks = json.loads(tracker.read_text(run_id, "looks.json") or "[]")  # also an unfinished run's looks so far
    spec_file = tags.get("orchestrate.spec_file", "")
    spec_text = tracker.read_text(run_id, f"spec/{Path(spec_file).name}") if spec_file else None
    arm_runs = [r for r in _children(tracker, experiment_id, run_id) if r.data.tags.get(LEVEL) == "arm"]
    order = list((plan.get("arms") and [a["arm"] for a in plan["arms"]]) or params.get("arms", "").split(","))
    arm_runs.sort(key=lambda r: order.index(r.data.tags.get(ARM)) if r.data.tags.get(ARM) in order else len(order))
    objectives = {a.get("arm"): next(iter(a.get("objectives") or {}), None) for a in plan.get("arms") or []}
    arms = [
        _arm_summary(
            tracker,
            arm_run,
            _children(tracker, experiment_id, arm_run.info.run_id),
            with_images,
            objectives.get(arm_run.data.tags.get(ARM)) if with_history else None,
        )
        for arm_run in arm_runs
    ]
    return RunSummary(
        run_id=run_id,
        experiment_id=experiment_id,
        hypothesis=tags.get("orchestrate.hypothesis", plan.get("hypothesis", "")),
        status=parent.info.status,
        statement=tags.get("mlflow.note.content", ""),
        source=_source(spec_text, tags.get("orchestrate.profile")),
        spec_file=spec_file,
        spec_sha256=tags.get("orchestrate.spec_sha256", ""),
        profile=tags.get("orchestrate.profile", "default"),
        git_commit=tags.get("orchestrate.git_commit", "unknown"),
        tracking_uri=tracker.uri,
        plan=plan,
        claims=claims,
        arms=arms,
        verdicts=[Verdict.model_validate(v) for v in logged.get("verdicts", [])],
        posthoc=_posthoc(tracker, run_id) if tags.get("orchestrate.posthoc") == "true" else None,
        looks=[Look.from_dict(look) for look in looks],
    )


def _children(tracker: Tracker, experiment_id: str, run_id: str) -> list[Any]:
    return tracker.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")


def _arm_summary(
    tracker: Tracker, arm_run: Any, children: list[Any], with_images: bool, objective: str | None = None
) -> ArmSummary:
    arm_id = arm_run.info.run_id
    tags, params, metrics = arm_run.data.tags, arm_run.data.params, arm_run.data.metrics
    trials = sorted(
        (_record(r, RunKind.TRIAL) for r in children if r.data.tags.get(LEVEL) == RunKind.TRIAL),
        key=lambda r: r.start_time,
    )
    confirms = latest_per_seed(
        [_record(r, RunKind.CONFIRM) for r in children if r.data.tags.get(LEVEL) == RunKind.CONFIRM]
    )
    counted = {s: sum(1 for t in trials if t.status == s) for s in STATUSES}
    counts = {s.value: int(metrics.get(f"trials_{s.lower()}", counted[s])) for s in STATUSES}
    best_run = tags.get("orchestrate.best_run") or None
    arm_images = image_paths(tracker, arm_id) if with_images else []
    if objective is not None:  # per-epoch values of the trials that trained (report.diagnostics)
        for record in trials:
            if record.status in (COMPLETED, STOPPED):
                record.history = tracker.metric_history(record.run_id, objective)
    if with_images:
        for record in [*confirms, *trials]:
            if record.status != FAILED:
                record.images = image_paths(tracker, record.run_id)
    return ArmSummary(
        arm=tags.get(ARM, ""),
        method=tags.get("orchestrate.method", params.get("method", "")),
        run_id=arm_id,
        best_run_id=best_run,
        best_reason=tags.get("orchestrate.best_reason", ""),
        best_params={k[len("best.") :]: v for k, v in params.items() if k.startswith("best.")},
        fixed={k[len("fixed.") :]: v for k, v in params.items() if k.startswith("fixed.")},
        counts=counts,
        trials=trials,
        confirms=confirms,
        images=arm_images,
    )


def _record(run: Any, kind: RunKind) -> RunRecord:
    tags = run.data.tags
    status = tags.get("orchestrate.status") or {"FINISHED": COMPLETED}.get(run.info.status, run.info.status)
    if run.info.status in ("KILLED", "RUNNING", "SCHEDULED"):
        status = run.info.status  # left by an interrupted driver, superseded on resume
    if status in _STATUS_VALUES:
        status = TrialStatus(status)
    seed_text = run.data.params.get("seed", tags.get("orchestrate.seed"))
    try:
        seed = int(seed_text) if seed_text is not None else None
    except ValueError:
        seed = None
    return RunRecord(
        run_id=run.info.run_id,
        name=tags.get("mlflow.runName", run.info.run_id[:8]),
        arm=tags.get(ARM, ""),
        kind=kind,
        status=status,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        seed=seed,
        start_time=int(run.info.start_time or 0),
        error=tags.get("orchestrate.error"),
    )


def latest_per_seed(confirms: list[RunRecord]) -> list[RunRecord]:
    """Confirmation runs the driver kept: finished ones, the newest per seed (an
    interrupted confirmation is rerun whole on resume), in seed order."""
    kept: dict[int | None, RunRecord] = {}
    for record in sorted(confirms, key=lambda r: r.start_time):
        if record.status in ("KILLED", "RUNNING", "SCHEDULED"):
            continue
        kept[record.seed] = record
    return sorted(kept.values(), key=lambda r: (r.seed is None, r.seed or 0))


def _source(spec_text: str | None, profile: str | None) -> str:
    if not spec_text:
        return ""
    try:
        spec = yaml.safe_load(spec_text) or {}
    except yaml.YAMLError:
        return ""
    override = ((spec.get("profiles") or {}).get(profile or "") or {}).get("source")
    return str(override or spec.get("source") or "")


def _posthoc(tracker: Tracker, run_id: str) -> PosthocJudgement | None:
    from orchestrator.judge import Verdict

    text = tracker.read_text(run_id, "verdicts_posthoc.json")
    if not text:
        return None
    data = json.loads(text)
    return PosthocJudgement(
        claims=list(data.get("claims", [])),
        registered_claims=list(data.get("registered_claims", [])),
        spec_file=str(data.get("spec_file", "")),
        judged_at=str(data.get("judged_at", "")),
        confidence=float(data.get("confidence", 0.95)),
        family_wise=data.get("family_wise"),
        verdicts=[Verdict.model_validate(v) for v in data.get("verdicts", [])],
    )
