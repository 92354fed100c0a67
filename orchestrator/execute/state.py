"""What a run has done so far, persisted after every change, so nothing is lost.

One JSON file per (hypothesis, profile) under the state folder. It maps trials to
their MLflow runs (a resumed driver never logs a trial twice), marks which arms
finished their search and which rounds of confirmation (a rerun skips them), and keeps
the looks the judge took between rounds (a rerun continues from the last one, never
judging a look twice). Written atomically (write to a temporary file, then rename), so
a SIGKILL never leaves half a file.

A file that is damaged all the same (a disk fault, a hand edit, a copy cut short) is
refused whole, before anything starts (``DamagedStateError``, exit 2): starting over
silently would orphan the MLflow runs it maps, and going on with part of it could log
a trial twice or judge from a record that lies. The message names the file and says
what to do: delete it to start the hypothesis over (finished trials are reused from
the archive), or restore it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.errors import DamagedStateError, InputError
from orchestrator.execute.archive import record_problem
from orchestrator.results import FAILED, TrialRecord

RoundKey = Annotated[str, Field(pattern=r"^[1-9][0-9]*$")]


class _ArmState(BaseModel):
    """One arm's entry, as ``RunState`` and the Tuner restore (``tuning._fit``) read it.
    Keys of earlier versions (``confirm_done``...) are let through: a finished run's file
    is read before it is set aside."""

    model_config = ConfigDict(strict=True, extra="allow")

    arm_run_id: str | None = None
    trial: dict[str, str] = {}
    confirm: dict[str, str] = {}
    records: dict[Literal["trial", "confirm"], dict[str, TrialRecord]] = {}
    search_done: bool = False
    trials: list[TrialRecord] = []
    confirm_rounds: dict[RoundKey, list[TrialRecord]] = {}

    @model_validator(mode="after")
    def _callback_keys_are_text(self) -> "_ArmState":
        for key, value in (self.model_extra or {}).items():
            if key.endswith("_callback_key") and not isinstance(value, str):
                raise ValueError(f"{key} should be a string")
        return self

    def all_records(self) -> list[TrialRecord]:
        return [*self.trials, *(r for kind in self.records.values() for r in kind.values()),
                *(r for rounds in self.confirm_rounds.values() for r in rounds)]


class _StateFile(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    spec_sha256: str
    hypothesis: str
    profile: str
    finished: bool
    arms: dict[str, _ArmState]
    parent_run_id: str | None = None
    experiment_id: str | None = None
    looks: list[dict[str, Any]] = []


def read_state_file(path: Path) -> dict[str, Any]:
    """The run state saved at ``path``, checked whole, or ``DamagedStateError``."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _damaged(path, f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}") from exc
    except OSError as exc:
        raise _damaged(path, f"cannot be read ({exc.strerror or exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _damaged(path, f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise _damaged(path, f"a JSON {type(data).__name__}, not the object a run state is")
    try:
        shape = _StateFile.model_validate_json(text)
    except ValidationError as exc:
        raise _damaged(path, _first_error(exc)) from exc
    problem = _content_problem(shape)
    if problem:
        raise _damaged(path, problem)
    return data


def _content_problem(shape: _StateFile) -> str | None:
    """What the types alone do not say: trial records that lie, looks that cannot be read."""
    from orchestrator.execute.looks import Look

    for arm, arm_state in shape.arms.items():
        for record in arm_state.all_records():
            problem = record_problem(record)
            if problem:
                return f"arm {arm!r}, trial {record.trial_id!r}: {problem}"
    for index, look in enumerate(shape.looks):
        try:
            Look.from_dict(look)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return f"look {index + 1} cannot be read ({type(exc).__name__}: {exc})".splitlines()[0]
    return None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where or 'the file'}: {error['msg']}{more}"


def _damaged(path: Path, problem: str) -> DamagedStateError:
    return DamagedStateError(
        f"{path}: the run state is damaged ({problem}); delete the file to start this hypothesis over "
        "(finished trials are reused from the archive), or restore it from a copy")


class RunState:
    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @classmethod
    def open(cls, folder: Path, hypothesis: str, profile: str, spec_sha256: str, fresh: bool) -> "RunState":
        """The unfinished run of this very spec, to resume; else a new state. A damaged
        file is refused (``read_state_file``) unless ``fresh``, which never reads it."""
        path = folder / f"{hypothesis}--{profile}.json"
        if (path.exists() or path.is_symlink()) and not fresh:
            data = read_state_file(path)
            if data["spec_sha256"] == spec_sha256 and not data["finished"]:
                return cls(path, data)
        state = cls(path, {"spec_sha256": spec_sha256, "hypothesis": hypothesis, "profile": profile, "arms": {}, "finished": False})
        state.save()
        return state

    def save(self) -> None:
        """Atomically; a write that fails (a full disk, a read-only folder) is an
        ``InputError`` naming the file, and leaves the last saved state as it was."""
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            folder = self.path.parent
            if folder.exists() and not folder.is_dir():
                raise InputError(f"{self.path}: cannot save the run state: {folder} is a file, not a folder; move it away") from exc
            raise InputError(f"{self.path}: cannot save the run state ({exc.strerror or exc}); free space or make the "
                             "folder writable, then run the same command again to resume") from exc

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, **values: Any) -> None:
        self.data.update(values)
        self.save()

    def arm(self, arm: str) -> dict[str, Any]:
        return self.data["arms"].setdefault(arm, {"trial": {}, "confirm": {}, "records": {"trial": {}, "confirm": {}}})

    def records(self, arm: str, kind: str) -> dict[str, dict[str, Any]]:
        """Finished trials (TrialRecord fields) of an arm's search or confirmation."""
        return self.arm(arm).setdefault("records", {"trial": {}, "confirm": {}}).setdefault(kind, {})

    def set_record(self, arm: str, kind: str, trial_id: str, record: dict[str, Any]) -> None:
        self.records(arm, kind)[trial_id] = record
        self.save()

    def set_arm(self, arm: str, **values: Any) -> None:
        self.arm(arm).update(values)
        self.save()

    def search_finished(self, arm: str) -> bool:
        """The arm's search ran to its end and left a trial to confirm.

        An arm whose every trial failed is not finished: the cause is usually the
        machine (a missing package, no GPU), and a rerun after it is fixed must search
        the arm again, not repeat the stored failure (``reopen_search``)."""
        arm_state = self.arm(arm)
        return bool(arm_state.get("search_done")) and any(t.get("status") != FAILED for t in arm_state.get("trials", []))

    def searched_without_result(self, arm: str) -> bool:
        """The arm's search ran to its end and every trial failed."""
        return bool(self.arm(arm).get("search_done")) and not self.search_finished(arm)

    def reopen_search(self, arm: str) -> None:
        """Forget an arm's search whose every trial failed, so that it is searched
        again by a new Tuner. Its trial runs stay in MLflow as FAILED and stay mapped
        (new runs are numbered after them; ``_close_stale`` still sees them)."""
        arm_state = self.arm(arm)
        arm_state["search_done"] = False
        arm_state.pop("trials", None)
        arm_state.pop("trial_callback_key", None)  # else the finished Tuner is restored, with nothing left to run
        self.records(arm, "trial").clear()
        self.save()

    def trial_runs(self, arm: str, kind: str) -> dict[str, str]:
        return self.arm(arm)[kind]

    def trial_run(self, arm: str, kind: str, trial_id: str) -> str | None:
        return self.trial_runs(arm, kind).get(trial_id)

    def set_trial_run(self, arm: str, kind: str, trial_id: str, run_id: str) -> None:
        self.trial_runs(arm, kind)[trial_id] = run_id
        self.save()

    def confirm_round_done(self, arm: str, round_index: int) -> bool:
        return str(round_index) in self.arm(arm).get("confirm_rounds", {})

    def finish_confirm_round(self, arm: str, round_index: int, records: list[dict[str, Any]]) -> None:
        """The arm's confirmation runs of round ``round_index`` (1-based), all ended."""
        self.arm(arm).setdefault("confirm_rounds", {})[str(round_index)] = records
        self.save()

    def confirm_records(self, arm: str) -> list[dict[str, Any]]:
        """The arm's confirmation runs of every finished round, round after round."""
        rounds = self.arm(arm).get("confirm_rounds", {})
        return [record for key in sorted(rounds, key=int) for record in rounds[key]]

    def looks(self) -> list[dict[str, Any]]:
        """The looks taken so far (``execute.looks.Look.to_dict``), in order."""
        return list(self.data.get("looks", []))

    def add_look(self, look: dict[str, Any]) -> None:
        self.data.setdefault("looks", []).append(look)
        self.save()
