"""Confirmation runs -> the judge's inputs: values, failed seeds, and fixed metrics.

The run (``execute.runner``) and the re-judge (``rejudge``) both build what
``judge_claims`` takes from here, so a re-judgement sees the same evidence as the run:

- ``samples``: arm -> metric -> seed -> value of every confirmation run that did not fail;
- ``failed``: arm -> seed -> error of every one that did (status FAILED);
- ``exact_metrics``: arm -> the metrics its method fixes by configuration
  (``Method.exact_metrics``).

    >>> from types import SimpleNamespace as Run
    >>> runs = {"lora": [Run(seed=1, status="COMPLETED", error=None, metrics={"acc": 0.9}),
    ...                  Run(seed=2, status="FAILED", error="NonFiniteLossError: nan", metrics={})]}
    >>> confirmation_samples(runs), failed_seeds(runs)
    ({'lora': {'acc': {1: 0.9}}}, {'lora': {2: 'NonFiniteLossError: nan'}})
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol

from orchestrator.results import FAILED


class ConfirmRun(Protocol):
    """What both the driver's ``TrialRecord`` and the report's ``RunRecord`` hold."""

    seed: int | None
    status: str
    error: str | None
    metrics: Mapping[str, Any]


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
