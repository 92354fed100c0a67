"""Typed results passed from execution to judging and reporting."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10 (pyproject allows it): the same behaviour, by hand

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


class TrialStatus(StrEnum):
    """How a trial or confirmation run ended. The values are the strings the run state,
    the trial archive and the ``orchestrate.status`` MLflow tag hold (a ``StrEnum``
    equals, hashes and serialises as its value), so files written before stay readable."""

    COMPLETED = "COMPLETED"  # every epoch ran, constraints (if any) met
    FAILED = "FAILED"  # an error ended it (run again by a later run)
    STOPPED = "STOPPED"  # the scheduler stopped it early
    INFEASIBLE = "INFEASIBLE"  # finished, but violates a constraint


class RunKind(StrEnum):
    """What a recorded run is: a search trial or a confirmation run (also the
    ``orchestrate.level`` tag of its MLflow run)."""

    TRIAL = "trial"
    CONFIRM = "confirm"


#: Short names, as the statuses read in code (``record.status == FAILED``).
COMPLETED, FAILED = TrialStatus.COMPLETED, TrialStatus.FAILED
STOPPED, INFEASIBLE = TrialStatus.STOPPED, TrialStatus.INFEASIBLE
_Member = TypeVar("_Member", TrialStatus, RunKind)


def _member_of(kind: type[_Member], field_name: str) -> BeforeValidator:
    """Pydantic's check of a stored record's ``field_name`` (run state, archive lines),
    before its type's: a value that is no member reads "status 'DONE' is none of
    COMPLETED, ...", as the damaged-file messages always said."""

    def validate(value: Any) -> _Member:
        try:
            return kind(value)
        except ValueError:
            raise PydanticCustomError(
                "unknown_member",
                "{field} {value} is none of {known}",
                {"field": field_name, "value": repr(value), "known": ", ".join(kind)},
            ) from None

    return BeforeValidator(validate)


#: A trial reports its own facts (strings such as the precision it ran in) under keys
#: with this prefix; the driver logs them as params of the trial's MLflow run.
TRIAL_PARAM_PREFIX = "param."


@dataclass
class TrialRecord:
    """One search trial or confirmation run, as the driver saw it."""

    trial_id: str
    arm: str
    kind: Annotated[RunKind, _member_of(RunKind, "kind")]
    params: dict[str, Any]
    status: Annotated[TrialStatus, _member_of(TrialStatus, "status")] = TrialStatus.COMPLETED
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seed: int | None = None
    mlflow_run_id: str | None = None
    feasible: bool = True
    reused_from: str | None = None  # MLflow run of the earlier search this trial came from
    runtime: dict[str, str] = field(default_factory=dict)  # what the trial ran with (precision...), from its reports

    def __post_init__(self) -> None:
        # records rebuilt from the run state's JSON (``TrialRecord(**data)``) hold plain strings
        self.kind, self.status = RunKind(self.kind), TrialStatus(self.status)


@dataclass
class ArmOutcome:
    arm: str
    method: str
    trials: list[TrialRecord]
    best: TrialRecord | None
    best_reason: str
    confirm: list[TrialRecord] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = dict.fromkeys(TrialStatus, 0)
        for trial in self.trials:
            out[trial.status] = out.get(trial.status, 0) + 1
        return out
