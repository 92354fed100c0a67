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
import copy
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.errors import DamagedStateError, InputError
from orchestrator.execute.archive import record_problem
from orchestrator.results import FAILED, RunKind, TrialRecord

#: A round of confirmation (1-based), as a JSON key.
RoundKey = Annotated[str, Field(pattern=r"^[1-9][0-9]*$")]
_OLD_CONFIRM_KEY = re.compile(r"^confirm(?:_([1-9][0-9]*))?_callback_key$")


class ArmState(BaseModel):
    """One arm's progress, saved as it happens.

    The JSON keys ``trial``, ``confirm`` and ``records`` are those of earlier versions
    (their Python names say what they hold); the Tuner callback keys, once saved under
    names made at run time (``trial_callback_key``, ``confirm_2_callback_key``), are
    read into their typed fields (``_from_previous_version``), so a run interrupted under
    the previous version resumes. Other keys of earlier versions (``confirm_done``...)
    are ignored: a finished run's file is read before it is set aside.

    Attributes:
        arm_run_id: the arm's MLflow run, saved before anything is logged to it.
        trial_runs: search trial id (Ray Tune's) -> its MLflow run.
        confirm_runs: confirmation trial id -> its MLflow run.
        records: kind -> trial id -> the finished trial, as the recorder saw it end.
        search_done: the arm's search Tuner returned (its trials are in ``trials``).
        trials: every trial of the finished search, the reused ones included.
        confirm_rounds: round (1-based, as text) -> that round's confirmation runs,
            saved when the round's Tuner returned.
        search_callback_key: the key of the recorder callback of the search Tuner: a
            resumed driver restores that Tuner under the same key (``tuning._fit``).
        confirm_callback_keys: round -> the key of that round's confirmation Tuner.
    """

    model_config = ConfigDict(
        strict=True, extra="ignore", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    arm_run_id: str | None = None
    trial_runs: dict[str, str] = Field(default_factory=dict, alias="trial")
    confirm_runs: dict[str, str] = Field(default_factory=dict, alias="confirm")
    records: dict[RunKind, dict[str, TrialRecord]] = Field(default_factory=dict)
    search_done: bool = False
    trials: list[TrialRecord] = Field(default_factory=list)
    confirm_rounds: dict[RoundKey, list[TrialRecord]] = Field(default_factory=dict)
    search_callback_key: str | None = None
    confirm_callback_keys: dict[RoundKey, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_previous_version(cls, data: Any) -> Any:
        """The callback keys as the previous version saved them, one key per Tuner."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "trial_callback_key" in data:
            data.setdefault("search_callback_key", data.pop("trial_callback_key"))
        old = {key: match.group(1) or "1" for key in list(data) if (match := _OLD_CONFIRM_KEY.match(key))}
        if old:
            keys = dict(data.get("confirm_callback_keys") or {})
            for key, round_key in old.items():
                keys.setdefault(round_key, data.pop(key))
            data["confirm_callback_keys"] = keys
        return data

    def runs(self, kind: RunKind) -> dict[str, str]:
        """Trial id -> MLflow run, of the arm's search trials or confirmation runs."""
        return self.trial_runs if kind == RunKind.TRIAL else self.confirm_runs

    def all_records(self) -> list[TrialRecord]:
        return [
            *self.trials,
            *(r for kind in self.records.values() for r in kind.values()),
            *(r for rounds in self.confirm_rounds.values() for r in rounds),
        ]


class StateFile(BaseModel):
    """A run state file, whole.

    Attributes:
        spec_sha256: the checksum of the spec (profile applied) the run state belongs
            to; another spec starts a new state.
        hypothesis: the hypothesis's name.
        profile: the profile applied.
        finished: the run ended (judged, its MLflow run closed); a rerun starts anew.
        arms: each arm's progress, by arm name.
        parent_run_id: the hypothesis's MLflow run, saved before anything is logged to it.
        experiment_id: the MLflow experiment of that run.
        looks: the looks the judge took so far (``execute.looks.Look.to_dict``), in order.
    """

    # NaN and infinite metrics are saved as NaN / Infinity, as json.dumps wrote them and
    # json.loads reads them back (pydantic's default, null, would come back as None)
    model_config = ConfigDict(strict=True, extra="ignore", ser_json_inf_nan="constants")

    spec_sha256: str
    hypothesis: str
    profile: str
    finished: bool
    arms: dict[str, ArmState]
    parent_run_id: str | None = None
    experiment_id: str | None = None
    looks: list[dict[str, Any]] = Field(default_factory=list)


def read_state_file(path: Path) -> StateFile:
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
        content = StateFile.model_validate_json(text)
    except ValidationError as exc:
        raise _damaged(path, _first_error(exc)) from exc
    problem = _content_problem(content)
    if problem:
        raise _damaged(path, problem)
    return content


def _content_problem(content: StateFile) -> str | None:
    """What the types alone do not say: trial records that lie, looks that cannot be read."""
    from orchestrator.execute.looks import Look

    for arm, arm_state in content.arms.items():
        for record in arm_state.all_records():
            problem = record_problem(record)
            if problem:
                return f"arm {arm!r}, trial {record.trial_id!r}: {problem}"
    for index, look in enumerate(content.looks):
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
        "(finished trials are reused from the archive), or restore it from a copy"
    )


class RunState:
    """The run state file of one (hypothesis, profile) and its content (``StateFile``).

    Every change goes through a method that saves the file before it returns; the
    records it is given are copied, so a later change to the caller's record is never
    saved by accident."""

    def __init__(self, path: Path, content: StateFile) -> None:
        self.path = path
        self.content = content

    @classmethod
    def open(cls, folder: Path, hypothesis: str, profile: str, spec_sha256: str, fresh: bool) -> RunState:
        """The unfinished run of this very spec, to resume; else a new state. A damaged
        file is refused (``read_state_file``) unless ``fresh``, which never reads it."""
        path = folder / f"{hypothesis}--{profile}.json"
        if (path.exists() or path.is_symlink()) and not fresh:
            content = read_state_file(path)
            if content.spec_sha256 == spec_sha256 and not content.finished:
                return cls(path, content)
        state = cls(
            path, StateFile(spec_sha256=spec_sha256, hypothesis=hypothesis, profile=profile, finished=False, arms={})
        )
        state.save()
        return state

    def save(self) -> None:
        """Atomically; a write that fails (a full disk, a read-only folder) is an
        ``InputError`` naming the file, and leaves the last saved state as it was."""
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # pydantic's own serialiser: 15x faster than json.dumps(model_dump()) at 3,000 records
            # (12 ms against 182 ms), and the state is saved twice per trial (docs/scale.md)
            tmp.write_text(self.content.model_dump_json(by_alias=True, indent=1))
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            folder = self.path.parent
            if folder.exists() and not folder.is_dir():
                raise InputError(
                    f"{self.path}: cannot save the run state: {folder} is a file, not a folder; move it away"
                ) from exc
            raise InputError(
                f"{self.path}: cannot save the run state ({exc.strerror or exc}); free space or make the "
                "folder writable, then run the same command again to resume"
            ) from exc

    # -- the run ----------------------------------------------------------------------
    @property
    def parent_run_id(self) -> str | None:
        return self.content.parent_run_id

    @property
    def experiment_id(self) -> str | None:
        return self.content.experiment_id

    def set_parent_run(self, run_id: str, experiment_id: str) -> None:
        self.content.parent_run_id, self.content.experiment_id = run_id, experiment_id
        self.save()

    def finish(self) -> None:
        """The run ended: a rerun of the same spec starts a new one."""
        self.content.finished = True
        self.save()

    # -- each arm ---------------------------------------------------------------------
    def arm(self, arm: str) -> ArmState:
        """The arm's progress (new and empty the first time it is asked for)."""
        return self.content.arms.setdefault(arm, ArmState())

    def arms(self) -> dict[str, ArmState]:
        return self.content.arms

    def set_arm_run(self, arm: str, run_id: str) -> None:
        self.arm(arm).arm_run_id = run_id
        self.save()

    def finish_search(self, arm: str, trials: list[TrialRecord]) -> None:
        """The arm's search Tuner returned with ``trials`` (the reused ones included)."""
        arm_state = self.arm(arm)
        arm_state.search_done, arm_state.trials = True, copy.deepcopy(trials)
        self.save()

    def search_trials(self, arm: str) -> list[TrialRecord]:
        """Every trial of the arm's finished search."""
        return list(self.arm(arm).trials)

    def search_finished(self, arm: str) -> bool:
        """The arm's search ran to its end and left a trial to confirm.

        An arm whose every trial failed is not finished: the cause is usually the
        machine (a missing package, no GPU), and a rerun after it is fixed must search
        the arm again, not repeat the stored failure (``reopen_search``)."""
        arm_state = self.arm(arm)
        return arm_state.search_done and any(t.status != FAILED for t in arm_state.trials)

    def searched_without_result(self, arm: str) -> bool:
        """The arm's search ran to its end and every trial failed."""
        return self.arm(arm).search_done and not self.search_finished(arm)

    def reopen_search(self, arm: str) -> None:
        """Forget an arm's search whose every trial failed, so that it is searched
        again by a new Tuner. Its trial runs stay in MLflow as FAILED and stay mapped
        (new runs are numbered after them; ``_close_stale`` still sees them)."""
        arm_state = self.arm(arm)
        arm_state.search_done, arm_state.trials = False, []
        arm_state.search_callback_key = None  # else the finished Tuner is restored, with nothing left to run
        arm_state.records.pop(RunKind.TRIAL, None)
        self.save()

    # -- trial runs -------------------------------------------------------------------
    def trial_runs(self, arm: str, kind: RunKind) -> dict[str, str]:
        """Trial id -> MLflow run of the arm's search trials or confirmation runs."""
        return self.arm(arm).runs(kind)

    def trial_run(self, arm: str, kind: RunKind, trial_id: str) -> str | None:
        return self.trial_runs(arm, kind).get(trial_id)

    def set_trial_run(self, arm: str, kind: RunKind, trial_id: str, run_id: str) -> None:
        self.trial_runs(arm, kind)[trial_id] = run_id
        self.save()

    def records(self, arm: str, kind: RunKind) -> dict[str, TrialRecord]:
        """Finished trials of an arm's search or confirmation, by trial id."""
        return dict(self.arm(arm).records.get(kind, {}))

    def set_record(self, arm: str, kind: RunKind, record: TrialRecord) -> None:
        self.arm(arm).records.setdefault(RunKind(kind), {})[record.trial_id] = copy.deepcopy(record)
        self.save()

    def callback_key(self, arm: str, confirm_round: int | None = None) -> str | None:
        """The key of the recorder callback of the arm's search Tuner (no
        ``confirm_round``) or of that round's confirmation Tuner; None: not started."""
        arm_state = self.arm(arm)
        return (
            arm_state.search_callback_key
            if confirm_round is None
            else arm_state.confirm_callback_keys.get(str(confirm_round))
        )

    def set_callback_key(self, arm: str, key: str, confirm_round: int | None = None) -> None:
        arm_state = self.arm(arm)
        if confirm_round is None:
            arm_state.search_callback_key = key
        else:
            arm_state.confirm_callback_keys[str(confirm_round)] = key
        self.save()

    # -- confirmation and looks -------------------------------------------------------
    def confirm_round_done(self, arm: str, round_index: int) -> bool:
        return str(round_index) in self.arm(arm).confirm_rounds

    def finish_confirm_round(self, arm: str, round_index: int, records: list[TrialRecord]) -> None:
        """The arm's confirmation runs of round ``round_index`` (1-based), all ended."""
        self.arm(arm).confirm_rounds[str(round_index)] = copy.deepcopy(records)
        self.save()

    def confirm_records(self, arm: str) -> list[TrialRecord]:
        """The arm's confirmation runs of every finished round, round after round."""
        rounds = self.arm(arm).confirm_rounds
        return [record for key in sorted(rounds, key=int) for record in rounds[key]]

    def looks(self) -> list[dict[str, Any]]:
        """The looks taken so far (``execute.looks.Look.to_dict``), in order."""
        return list(self.content.looks)

    def add_look(self, look: dict[str, Any]) -> None:
        self.content.looks.append(look)
        self.save()
