"""Finished trials kept across runs: a bigger search starts where a smaller one ended.

Raise ``trials_per_arm`` from 8 to 16 and run again: the 8 finished trials are told to
the sampler as they were (values, constraints, pruned or not) and only 8 new ones
train. A trial is reusable by any later search with the same *identity*: the task
(model, data fingerprint, split sizes), the training recipe, the method, its fixed
values and search space, the objectives, constraints, scheduler and seed. Anything
else changed (a different sampler, more trials, more confirmation seeds) keeps the
trials; a change to any of those fields starts a fresh archive.

Only trials that ended for a reason of the configuration are kept: COMPLETED,
STOPPED (early-stopped) and INFEASIBLE. FAILED trials are run again. ``--fresh`` and
``search.reuse_trials: false`` ignore the archive.

One JSON line per trial under ``.orchestrate/archive/<identity>.jsonl``, appended as
each trial ends (an interrupted search loses none); never pickle. Each line carries the
``sha256`` of its record, so a line edited or damaged after it was written is known.

A reused trial can choose an arm's winner, so nothing is reused on trust: a line is
reused only when it is a whole trial record of the right types, its status reusable,
every metric a number (NaN is what the trial itself reports for a value it could not
measure; infinities are never recorded) within the range the metric has by definition
(``judge.stats.metric_range``: an accuracy in [0, 1], a loss or a FLOPs ratio >= 0),
every parameter a single JSON value, and its checksum, where it has one (lines of
earlier versions have none), matching. Any other line is skipped, and ``load`` says
which and why, for the driver to print: a trial that is not reused is trained again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from orchestrator.results import COMPLETED, FAILED, INFEASIBLE, STOPPED, RunKind, TrialRecord

if TYPE_CHECKING:
    from orchestrator.plan import ArmPlan, Plan

REUSABLE = (COMPLETED, STOPPED, INFEASIBLE)
STATUSES = (*REUSABLE, FAILED)
KINDS = tuple(RunKind)
CHECKSUM = "sha256"
_RECORD = TypeAdapter(TrialRecord)
_FIELDS = frozenset(f.name for f in fields(TrialRecord))


def search_identity(plan: Plan, arm_plan: ArmPlan, data_key: str) -> str:
    """What makes two searches' trials interchangeable (see the module docstring)."""
    fields: dict[str, Any] = {
        "data": data_key,
        "task": plan.task.model_dump(),
        "training": plan.training.model_dump(),
        "method": arm_plan.method,
        "fixed": arm_plan.fixed,
        "params": {k: v.model_dump() for k, v in sorted(arm_plan.params.items())},
        "objectives": arm_plan.objectives,
        "constraints": [str(c) for c in arm_plan.constraints],
        "scheduler": arm_plan.scheduler,
        "seed": plan.search.seed,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class ArchiveLoad:
    """The reusable trials of one archive file, and one line per line skipped
    (``FILE:LINE: ...``, ready to print)."""

    records: list[TrialRecord] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class TrialArchive:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, identity: str) -> Path:
        return self.folder / f"{identity}.jsonl"

    def load(self, identity: str) -> ArchiveLoad:
        """Reusable trials in the order they were archived, each once; and every line
        that was not reused because it is damaged (see the module docstring)."""
        path = self._path(identity)
        if not path.exists():
            return ArchiveLoad()
        try:
            lines = path.read_bytes().split(b"\n")
        except OSError as exc:
            return ArchiveLoad([], [f"{path}: cannot be read ({exc.strerror or exc}); no archived trial reused"])
        seen: dict[str, TrialRecord] = {}
        skipped = []
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                record = parse_line(raw)
            except ValueError as exc:
                cut = number == len(lines) and not raw.rstrip().endswith(b"}")
                why = "cut short, as by a crash while it was written" if cut else str(exc)
                skipped.append(
                    f"{path}:{number}: archived trial not reused ({why}); delete the line to silence this note"
                )
                continue
            if record.status in REUSABLE:
                seen.setdefault(record.trial_id, record)
        return ArchiveLoad(list(seen.values()), skipped)

    def add(self, identity: str, records: list[TrialRecord]) -> None:
        """Append the reusable ones not archived yet, each with its checksum; after a
        line cut short, on a new line."""
        known = {r.trial_id for r in self.load(identity).records}
        fresh = [r for r in records if r.status in REUSABLE and r.trial_id not in known]
        if not fresh:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(identity)
        with open(path, "a+b") as out:
            if out.tell() and not _ends_with_newline(out):
                out.write(b"\n")
            for record in fresh:
                out.write(archive_line(record).encode() + b"\n")
            out.flush()
            os.fsync(out.fileno())


def archive_line(record: TrialRecord) -> str:
    """One archive line: the record's fields and their checksum."""
    payload = json.loads(json.dumps(asdict(record), default=str))  # what a reader will see
    return json.dumps({**payload, CHECKSUM: _checksum(payload)})


def parse_line(raw: bytes) -> TrialRecord:
    """The trial record on an archive line, or ``ValueError`` saying what is wrong."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON (column {exc.colno}: {exc.msg})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not a trial record")
    missing = sorted(_FIELDS - data.keys())
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    expected = data.pop(CHECKSUM, None)
    try:
        record = _RECORD.validate_json(json.dumps(data), strict=True)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ValueError(f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}") from exc
    problem = record_problem(record)
    if problem:
        raise ValueError(problem)
    if expected is not None and expected != _checksum(data):
        raise ValueError("its checksum does not match its content (edited or damaged after it was written)")
    return record


def record_problem(record: TrialRecord) -> str | None:
    """What makes a stored trial record unusable, or None: an unknown status or kind, a
    metric that is not a number or lies outside its range, a parameter that is not a
    single value. Also the run state's records are checked with it (``execute.state``)."""
    from orchestrator.judge.stats import metric_range

    if record.status not in STATUSES:
        return f"status {record.status!r} is none of {', '.join(STATUSES)}"
    if record.kind not in KINDS:
        return f"kind {record.kind!r} is none of {', '.join(KINDS)}"
    for name, value in record.metrics.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"metric {name} is {value!r}, not a number"
        number = _as_float(value)
        if math.isinf(number):
            return f"metric {name} is {value}, not a finite number"
        low, high = metric_range(name)
        if not math.isnan(number) and not low <= number <= high:
            return f"metric {name} is {value!r}, outside [{low:g}, {high:g}]"
    for name, value in record.params.items():
        if not (value is None or isinstance(value, (str, int, float))) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            return f"parameter {name} is {value!r}, not a single finite value"
    return None


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float
        return math.inf


def _checksum(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _ends_with_newline(handle: Any) -> bool:
    handle.seek(-1, os.SEEK_END)
    return handle.read(1) == b"\n"
