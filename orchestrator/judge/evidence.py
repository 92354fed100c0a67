"""Confirmation runs -> the judge's inputs: values, failed seeds, and fixed metrics.

The run (``execute.confirm``) and the re-judge (``rejudge``) both build what
``judge_claims`` takes from here, so a re-judgement sees the same evidence as the run:

- ``samples``: arm -> metric -> seed -> value of every confirmation run that did not fail;
- ``failed``: arm -> seed -> error of every one that did (status FAILED);
- ``exact_metrics``: arm -> the metrics its method fixes by configuration
  (``Method.exact_metrics``);
- ``per_example_outcomes``: arm -> metric -> seed -> the outcome of each held-out
  example (read back from the runs' MLflow artifacts), for the metrics that are means
  of them: the sampling variance of the test examples, and arms paired by example.

    >>> from types import SimpleNamespace as Run
    >>> runs = {"lora": [Run(seed=1, status="COMPLETED", error=None, metrics={"acc": 0.9}),
    ...                  Run(seed=2, status="FAILED", error="NonFiniteLossError: nan", metrics={})]}
    >>> confirmation_samples(runs), failed_seeds(runs)
    ({'lora': {'acc': {1: 0.9}}}, {'lora': {2: 'NonFiniteLossError: nan'}})
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from orchestrator.results import FAILED
from orchestrator.trial.per_example import PER_EXAMPLE_FOLDER, PerExampleRecord

if TYPE_CHECKING:
    from orchestrator.tracking import Tracker

#: The reported metrics that are means of per-example values (F1 and MCC are not), and
#: how far a record's mean may be from the reported value: accuracy (and a causal LM's
#: exact match, its 0/1 hits) exactly, the loss within its rounding to 5 decimals per
#: example. Perplexity, the exponential of the mean loss, is not a mean: seeds only.
PER_EXAMPLE_TOLERANCE = {"test_accuracy": 1e-12, "test_exact_match": 1e-12, "test_loss": 1e-4}


class ConfirmRun(Protocol):
    """What both the driver's ``TrialRecord`` and the report's ``RunRecord`` hold (and an
    MLflow run id, named differently: see ``per_example_outcomes``). Read-only members, so
    a record whose fields are narrower (``metrics: dict[str, float]``) still qualifies."""

    @property
    def seed(self) -> int | None: ...
    @property
    def status(self) -> str: ...
    @property
    def error(self) -> str | None: ...
    @property
    def metrics(self) -> Mapping[str, Any]: ...


def _seed(run: ConfirmRun) -> int:
    return int(run.seed if run.seed is not None else 0)


def confirmation_samples(runs_by_arm: Mapping[str, Iterable[ConfirmRun]]) -> dict[str, dict[str, dict[int, float]]]:
    """arm -> metric -> seed -> value of the numeric metrics of every run that did not fail."""
    samples: dict[str, dict[str, dict[int, float]]] = {}
    for arm, runs in runs_by_arm.items():
        per_metric: dict[str, dict[int, float]] = {}
        for run in runs:
            if run.status == FAILED:
                continue
            for name, value in run.metrics.items():
                if isinstance(value, (int, float)):
                    per_metric.setdefault(name, {})[_seed(run)] = float(value)
        samples[arm] = per_metric
    return samples


def failed_seeds(runs_by_arm: Mapping[str, Iterable[ConfirmRun]]) -> dict[str, dict[int, str]]:
    """arm -> seed -> error of the confirmation runs that failed (arms without any left out)."""
    failed: dict[str, dict[int, str]] = {}
    for arm, runs in runs_by_arm.items():
        for run in runs:
            if run.status == FAILED:
                failed.setdefault(arm, {})[_seed(run)] = run.error or "no error recorded"
    return failed


def exact_metrics_of(arm_methods: Mapping[str, str]) -> dict[str, frozenset[str]]:
    """arm -> ``exact_metrics`` of its method; an arm whose method cannot be found has none."""
    from methods import UnknownMethodError, get_method

    exact: dict[str, frozenset[str]] = {}
    for arm, method in arm_methods.items():
        try:
            exact[arm] = frozenset(get_method(method).exact_metrics)
        except (UnknownMethodError, ImportError):
            exact[arm] = frozenset()
    return exact


def per_example_outcomes(
    tracker: Tracker, runs_by_arm: Mapping[str, Iterable[ConfirmRun]]
) -> tuple[dict[str, dict[str, dict[int, np.ndarray]]], list[str]]:
    """(arm -> metric -> seed -> per-example values, notes) of the confirmation runs that
    did not fail, for "test_accuracy" (0/1 correctness) and "test_loss" (cross-entropy):
    the mean of each array is the run's reported metric. F1 and MCC are not means of
    per-example values and are never returned.

    A metric comes back for every arm or for none: every run that reports it must have
    a per-example record (``per_example/<split>.json``, written by confirmation runs;
    runs logged before it existed have none) whose mean matches its reported value, and
    all of them must hold the same examples in the same order (same ``n`` and labels
    hash). Otherwise the metric is left out and a note says why, e.g. "test_accuracy
    judged on seed variance only: lora seed 1001 has no per-example record". A run is
    read by its MLflow run id: ``mlflow_run_id`` (the driver's ``TrialRecord``) or
    ``run_id`` (the report's ``RunRecord``).
    """
    usable = {arm: [run for run in runs if run.status != FAILED] for arm, runs in runs_by_arm.items()}
    records = {(arm, _seed(run)): _read_record(tracker, run) for arm, runs in usable.items() for run in runs}
    outcomes: dict[str, dict[str, dict[int, np.ndarray]]] = {arm: {} for arm in runs_by_arm}
    notes: list[str] = []
    for metric in PER_EXAMPLE_TOLERANCE:
        reporting = [
            (arm, run)
            for arm, runs in usable.items()
            for run in runs
            if isinstance(run.metrics.get(metric), (int, float))
        ]
        if not reporting:
            continue
        values, problems = _metric_outcomes(metric, reporting, records)
        if problems:
            notes.append(f"{metric} judged on seed variance only: " + "; ".join(problems))
            continue
        for (arm, seed), array in values.items():
            outcomes[arm].setdefault(metric, {})[seed] = array
    return outcomes, notes


def _metric_outcomes(
    metric: str, reporting: list[tuple[str, ConfirmRun]], records: Mapping[tuple[str, int], PerExampleRecord | None]
) -> tuple[dict[tuple[str, int], np.ndarray], list[str]]:
    """(arm, seed) -> values of one metric, and what keeps it from being judged per example."""
    values: dict[tuple[str, int], np.ndarray] = {}
    problems: list[str] = []
    examples: dict[tuple[int, str], list[str]] = {}  # (n, labels hash) -> runs that scored those examples
    for arm, run in reporting:
        name, record = f"{arm} seed {_seed(run)}", records[(arm, _seed(run))]
        if record is None:
            problems.append(f"{name} has no per-example record")
            continue
        array = record.per_example_means().get(metric)
        if array is None or abs(float(array.mean()) - float(run.metrics[metric])) > PER_EXAMPLE_TOLERANCE[metric]:
            problems.append(f"{name}'s per-example record does not give its reported {metric}")
            continue
        values[(arm, _seed(run))] = array
        examples.setdefault((record.n, record.labels_sha256), []).append(name)
    if len(examples) > 1:
        groups = [f"{', '.join(names)} ({n} examples, labels {digest[:8]})" for (n, digest), names in examples.items()]
        problems.append("the runs scored different examples: " + " vs ".join(groups))
    return values, problems


def _read_record(tracker: Tracker, run: ConfirmRun) -> PerExampleRecord | None:
    """The run's record of the test split, or None when it has none (or one this code
    cannot read). The judge's per-example metrics are the test split's (``test_*``)."""
    run_id = getattr(run, "mlflow_run_id", None) or getattr(run, "run_id", None)
    text = tracker.read_text(run_id, f"{PER_EXAMPLE_FOLDER}/test.json") if run_id else None
    try:
        return PerExampleRecord.from_json(text) if text is not None else None
    except ValueError:
        return None
