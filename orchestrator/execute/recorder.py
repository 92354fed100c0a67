"""Driver-side Ray Tune callback: every trial into MLflow, exactly once.

Trials report to Ray Tune; this callback, running in the driver, turns those events
into MLflow runs (so an embedded sqlite store works even when trials run on other
nodes) and into the live progress table. The trial -> MLflow run id map is persisted
through ``RunState`` so a resumed driver never creates a second run for a trial.

Ray pickles ``RunConfig`` (callbacks included) into ``tuner.pkl``; the callback
therefore holds only a key into ``_RECORDERS``, never a client or a live display.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from orchestrator.execute.progress import ArmProgress
from orchestrator.results import COMPLETED, FAILED, INFEASIBLE, STOPPED, TRIAL_PARAM_PREFIX, RunKind, TrialRecord
from orchestrator.spec.constraints import Constraint
from orchestrator.tracking import ARM, LEVEL, Tracker
from orchestrator.trial.faults import ERROR_KEY, TRACE_KEY
from orchestrator.trial.trainable import ARM_KEY, SEED_KEY

if TYPE_CHECKING:
    from orchestrator.execute.state import RunState

_RECORDERS: dict[str, dict[str, TrialRecorder]] = {}  # callback key -> arm -> recorder
HIDDEN_RESULT_KEYS = {
    "timestamp",
    "time_this_iter_s",
    "time_total_s",
    "pid",
    "hostname",
    "node_ip",
    "time_since_restore",
    "iterations_since_restore",
    "checkpoint_dir_name",
    "done",
    "training_iteration",
    "date",
    "config",
    "trial_id",
    "experiment_tag",
}


@dataclass
class TrialRecorder:
    """What the callback needs to record one arm's trials (search or confirm)."""

    tracker: Tracker
    experiment_id: str
    parent_run_id: str
    arm: str
    kind: RunKind
    epochs: int
    constraints: list[Constraint]
    state: RunState
    progress: ArmProgress | None
    base_tags: dict[str, str]
    name_params: list[str]
    static_params: dict[str, Any] = field(default_factory=dict)  # confirm runs: the best config
    timeout_s: float | None = None  # search.trial_timeout_s: names the reason when a hung worker was ended
    on_finished: Callable[[TrialRecord], None] | None = None  # search trials: into the archive as each one ends
    records: dict[str, TrialRecord] = field(default_factory=dict)
    node_tagged: set[str] = field(default_factory=set)
    counter: int = 0
    started_at: dict[str, float] = field(default_factory=dict)
    traces: dict[str, str] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    numbers: dict[str, int] = field(default_factory=dict)  # trial id -> its number in its MLflow run's name

    # -- events ---------------------------------------------------------------------
    def started(self, trial_id: str, config: dict[str, Any]) -> None:
        params = {k: v for k, v in config.items() if not k.startswith("_")}
        seed = config.get(SEED_KEY)
        run_id = self.state.trial_run(self.arm, self.kind, trial_id)
        logged = self.static_params | params | ({"seed": seed} if seed is not None else {})
        # a trial resumed after an interruption: same MLflow run
        if run_id and self.tracker.run_status(run_id) is not None:
            self.tracker.reopen_run(run_id)
            self.tracker.set_tags(run_id, {"orchestrate.resumed": "true"})
            # again: a kill between creating the run and logging its params left none
            # (MLflow accepts a param logged twice with the same value)
            self.tracker.log_params(run_id, logged)
        else:
            self.counter = len(self.state.trial_runs(self.arm, self.kind)) + 1
            name = self._run_name(self.counter, params, seed)
            self.numbers[trial_id] = self.counter
            tags = {**self.base_tags, LEVEL: self.kind, ARM: self.arm, "orchestrate.trial_id": trial_id}
            if seed is not None:
                tags["orchestrate.seed"] = str(seed)
            run_id = self.tracker.start_run(self.experiment_id, name, tags, parent_id=self.parent_run_id)
            self.state.set_trial_run(self.arm, self.kind, trial_id, run_id)  # first: a kill now leaves no orphan
            self.tracker.log_params(run_id, logged)
        self.records[trial_id] = TrialRecord(
            trial_id, self.arm, self.kind, self.static_params | params, seed=seed, mlflow_run_id=run_id
        )
        self.started_at[trial_id] = time.monotonic()
        if self.progress:
            self.progress.running += 1

    def suggested(self, seconds: float) -> None:
        if self.progress is not None:
            self.progress.suggest_s += seconds

    def all_records(self) -> list[TrialRecord]:
        """Trials finished before an interruption (from the state) and in this session."""
        saved = self.state.records(self.arm, self.kind)
        return list({**saved, **self.records}.values())

    def _persist(self, record: TrialRecord) -> None:
        self.state.set_record(self.arm, self.kind, record)
        if self.on_finished is not None:
            self.on_finished(record)

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        record = self.records.get(trial_id)
        if record is None:
            return
        if ERROR_KEY in result:  # the trial's own fault, reported as its last result
            record.error = str(result[ERROR_KEY])
            self.traces[trial_id] = str(result.get(TRACE_KEY) or record.error)
            return
        facts = {
            k.removeprefix(TRIAL_PARAM_PREFIX): str(v) for k, v in result.items() if k.startswith(TRIAL_PARAM_PREFIX)
        }
        new_facts = facts if facts and not facts.items() <= record.runtime.items() else {}
        record.runtime.update(new_facts)
        metrics = {k: v for k, v in result.items() if k not in HIDDEN_RESULT_KEYS and _number(v)}
        record.metrics.update(metrics)
        tags: dict[str, str] = {}
        if trial_id not in self.node_tagged and result.get("node_ip"):  # which machine ran it (clusters)
            self.node_tagged.add(trial_id)
            tags = {
                "orchestrate.node_ip": str(result["node_ip"]),
                "orchestrate.hostname": str(result.get("hostname", "")),
            }
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        self.tracker.log_batch(self._run_id(record), metrics, new_facts, tags, step)  # one write per report
        if self.progress:
            self.progress.offer(metrics.get(self.progress.metric))

    def completed(self, trial_id: str, checkpoint_path: str | None) -> None:
        record = self.records.get(trial_id)
        if record is None:
            return
        if record.error is not None:
            self._fail(record, record.error, self.traces.get(trial_id, record.error))
            return
        epoch = int(record.metrics.get("epoch", 0))
        record.status = COMPLETED if epoch >= self.epochs else STOPPED
        if record.status == COMPLETED and self.constraints:
            record.feasible = all(
                _number(record.metrics.get(c.metric)) and c.violation(record.metrics[c.metric]) <= 0
                for c in self.constraints
            )
            if not record.feasible:
                record.status = INFEASIBLE
        if record.metrics.get("infeasible_before_training"):
            record.status, record.feasible = INFEASIBLE, False
        tags: dict[str, str] = {"orchestrate.status": record.status}
        if record.metrics.get("infeasible_before_training"):
            tags["orchestrate.infeasible"] = "before training, from its hyperparameters: " + ", ".join(
                map(str, self.constraints)
            )
        if record.status == STOPPED:
            tags["orchestrate.stopped_early"] = f"after epoch {epoch} of {self.epochs}"
        self.tracker.set_tags(self._run_id(record), tags)
        if checkpoint_path:
            self.tracker.log_artifacts(self._run_id(record), Path(checkpoint_path))
        self.tracker.end_run(self._run_id(record), "FINISHED")
        self._persist(record)
        self._count(record)

    def errored(self, trial_id: str, error: str) -> None:
        """Ray gave up on the trial: it raised past the trainable, or its worker died
        (after ``search.max_retries`` retries)."""
        record = self.records.get(trial_id)
        if record is None:
            return
        reason = _reason(error)
        elapsed = time.monotonic() - self.started_at.get(trial_id, time.monotonic())
        if self.timeout_s and elapsed >= self.timeout_s and _worker_died(error):
            reason = (
                f"TrialHungError: hung inside a step past its {self.timeout_s:g} s budget"
                " (search.trial_timeout_s); its worker was ended"
            )
        self._fail(record, reason, error)

    def retried(self, trial_id: str, error: str) -> None:
        """A transient failure that Ray Tune retries: counted and kept on the run."""
        record = self.records.get(trial_id)
        if record is None:
            return
        count = self.retries[trial_id] = self.retries.get(trial_id, 0) + 1
        self.tracker.set_tags(
            self._run_id(record), {"orchestrate.retries": str(count), "orchestrate.retry_reason": _reason(error)}
        )
        self.tracker.log_text(self._run_id(record), error, f"retry-{count}.txt")
        if self.progress:
            self.progress.running = max(0, self.progress.running - 1)

    def _fail(self, record: TrialRecord, reason: str, trace: str) -> None:
        record.status, record.error = FAILED, reason
        self.tracker.set_tags(self._run_id(record), {"orchestrate.status": FAILED, "orchestrate.error": reason})
        self.tracker.log_text(self._run_id(record), trace, "error.txt")  # the full trace
        self.tracker.end_run(self._run_id(record), "FAILED")
        self._persist(record)
        self._count(record)

    # -- helpers ----------------------------------------------------------------------
    @staticmethod
    def _run_id(record: TrialRecord) -> str:
        """The record's MLflow run (``started`` gives every record it keeps one)."""
        assert record.mlflow_run_id is not None
        return record.mlflow_run_id

    def _count(self, record: TrialRecord) -> None:
        """Into the progress display: counted, and a line when the run prints lines."""
        if not self.progress:
            return
        seconds = time.monotonic() - self.started_at.get(record.trial_id, time.monotonic())
        self.progress.finished(self._label(record), record, seconds)

    def _label(self, record: TrialRecord) -> str:
        """'confirm seed 2', or 'trial 7' as its MLflow run is named ('lora #7 ...'; a
        trial resumed after a kill goes by its Ray trial id)."""
        if self.kind == RunKind.CONFIRM:
            return f"confirm seed {record.seed}"
        return f"trial {self.numbers.get(record.trial_id, record.trial_id)}"

    def _run_name(self, number: int, params: dict[str, Any], seed: Any) -> str:
        if self.kind == RunKind.CONFIRM:
            return f"{self.arm} confirm seed={seed}"
        shown = [f"{k}={_short(params[k])}" for k in self.name_params if k in params][:4]
        return " ".join([f"{self.arm} #{number}", *shown])


class RecorderCallback(Callback):
    """Forwards Ray Tune trial events to the registered ``TrialRecorder`` of the
    trial's arm (``ARM_KEY`` in its config: a Tuner serves every arm)."""

    def __init__(self, recorders: list[TrialRecorder], key: str | None = None) -> None:
        self.key = key or uuid.uuid4().hex
        _RECORDERS[self.key] = {recorder.arm: recorder for recorder in recorders}

    def _recorder(self, trial: Any) -> TrialRecorder | None:
        """The recorder of the trial's arm; none for an arm this driver does not record
        (a restored Tuner may hold trials of an arm whose search is complete)."""
        recorders = _RECORDERS.get(self.key) or {}
        if ARM_KEY not in trial.config and len(recorders) == 1:
            return next(iter(recorders.values()))
        return recorders.get(trial.config.get(ARM_KEY))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if recorder := self._recorder(trial):
            recorder.started(trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if recorder := self._recorder(trial):
            recorder.result(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        recorder = self._recorder(trial)
        if not recorder:
            return
        checkpoint = trial.checkpoint
        if checkpoint is None:
            recorder.completed(trial.trial_id, None)
            return
        with checkpoint.as_directory() as folder:  # local path, or a download from s3:// etc.
            recorder.completed(trial.trial_id, folder)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if recorder := self._recorder(trial):
            recorder.errored(trial.trial_id, _error_text(trial))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if recorder := self._recorder(trial):
            recorder.retried(trial.trial_id, _error_text(trial))

    def release(self) -> None:
        _RECORDERS.pop(self.key, None)


def _error_text(trial: Any) -> str:
    """Ray writes the error to the trial's local folder before this callback runs;
    the copy in (possibly remote) storage comes later."""
    text = None
    try:
        if trial.error_file and Path(trial.error_file).exists():
            text = Path(trial.error_file).read_text()
        else:
            text = trial.get_error()
    except Exception:  # storage gone: still record that it failed
        text = None
    return str(text) if text else "trial failed (no error text was saved)"


def _reason(error: str) -> str:
    """The exception line of a Ray trace, e.g. 'RuntimeError: injected failure at step 1'."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*:", line) and "RayTaskError" not in line:
            return line[:500]
    return (lines[-1] if lines else "unknown error")[:500]


def _worker_died(error: str) -> bool:
    return any(text in error for text in ("ActorDiedError", "RayActorError", "actor died", "WorkerCrashedError"))


def _number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not (isinstance(value, float) and math.isinf(value))
    )


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
