"""Typed results passed from execution to judging and reporting."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COMPLETED, FAILED, STOPPED, INFEASIBLE = "COMPLETED", "FAILED", "STOPPED", "INFEASIBLE"
#: A trial reports its own facts (strings such as the precision it ran in) under keys
#: with this prefix; the driver logs them as params of the trial's MLflow run.
TRIAL_PARAM_PREFIX = "param."


@dataclass
class TrialRecord:
    """One search trial or confirmation run, as the driver saw it."""

    trial_id: str
    arm: str
    kind: str  # "trial" | "confirm"
    params: dict[str, Any]
    status: str = COMPLETED
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seed: int | None = None
    mlflow_run_id: str | None = None
    feasible: bool = True
    reused_from: str | None = None  # MLflow run of the earlier search this trial came from
    runtime: dict[str, str] = field(default_factory=dict)  # what the trial ran with (precision...), from its reports


@dataclass
class ArmOutcome:
    arm: str
    method: str
    trials: list[TrialRecord]
    best: TrialRecord | None
    best_reason: str
    confirm: list[TrialRecord] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {COMPLETED: 0, FAILED: 0, STOPPED: 0, INFEASIBLE: 0}
        for trial in self.trials:
            out[trial.status] = out.get(trial.status, 0) + 1
        return out
