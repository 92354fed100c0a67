"""Damaged state: the files a run leaves behind, each damaged one way, and what the next
command does with it (issue 21: "damaged state never crashes and never lies").

Every case is one row of a table, with what must follow written beside it: the exit
code (2: refused before anything started, with one line naming the file and what to do;
0: the run goes on without the damaged part, and a warning names it) and a fragment of
the message. The files are the real ones a real run left (``left_run``: the tiny
hypothesis of conftest, searched, confirmed and judged once per module); each case
damages its own copy. The rules:

- run state (``execute/state.py``): any damage refuses the run, exit 2: starting over
  silently would orphan the MLflow runs the file maps (delete it to start over);
- trial archive (``execute/archive.py``): a line that is not a sound trial record is
  not reused, with a warning naming FILE:LINE; the other lines are;
- tokenised cache (``tasks/prepare.py``): rebuilt, with a warning naming the file;
- MLflow store (``tracking.py``): damaged, read-only or full is a ``StoreError``, exit 2.

Cases refused before Ray starts go through the command line (a few seconds each); the
archive and the cache are checked where they are read, and one archive case end to end.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY_HYPOTHESIS, SharedRun, private_copy, run_in_folder
from orchestrator.cli import main
from orchestrator.errors import StoreError
from orchestrator.execute.archive import TrialArchive
from orchestrator.results import COMPLETED, TrialRecord
from orchestrator.spec.loader import load_hypothesis
from orchestrator.tasks.prepare import PreparedTask, TokenizedSplit, _save_cache, prepare_task
from orchestrator.tracking import Tracker

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    """One damaged file: how it is damaged, the exit code that must follow and a
    fragment of the one line that must name it."""

    name: str
    damage: Callable[[bytes], bytes]
    exit_code: int
    message: str

    def __str__(self) -> str:
        return self.name


# -- the folder a run left ------------------------------------------------------------------


@pytest.fixture(scope="module")
def left_run(tmp_path_factory, shared_ray) -> SharedRun:
    """The tiny hypothesis run to its end: its state, archive, cache and store are the
    files every case damages (a copy of them)."""
    run = run_in_folder(tmp_path_factory.mktemp("left-run"), "tiny.yaml", TINY_HYPOTHESIS)
    assert run.exit_code == 0
    return run


@pytest.fixture
def left_copy(left_run, tmp_path, monkeypatch) -> SharedRun:
    """A private copy of the left folder; the command runs in it (reports land there)."""
    with private_copy(left_run, tmp_path / "copy") as run:
        monkeypatch.chdir(run.folder)
        yield run


def run_again(
    run: SharedRun, capsys, command: str = "run", uri: str | None = None, quiet: bool = True
) -> tuple[int, list[str]]:
    """The same command again, in process: its exit code and its stderr lines."""
    capsys.readouterr()
    args = {
        "run": ["run", str(run.spec), "--state-dir", str(run.state_dir), *(["--quiet"] if quiet else [])],
        "judge": ["judge", "tiny-test"],
        "report": ["report", "tiny-test", "--out", str(run.folder / "report")],
    }[command]
    code = main([*args, "--tracking-uri", uri or run.uri])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err.splitlines()


def running_runs(run: SharedRun) -> int:
    db = sqlite3.connect(run.folder / "mlflow.db")
    try:
        return db.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0]
    finally:
        db.close()


def refused(code: int, lines: list[str], path: Path, message: str) -> None:
    """Exit 2 with exactly one line, which names the file and says what is wrong."""
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"orchestrate: {path}") and message in lines[0], lines[0]


# -- run state: refused whole, exit 2, the file left as it was -------------------------------


def _edit_state(change: Callable[[dict], None]) -> Callable[[bytes], bytes]:
    def damage(text: bytes) -> bytes:
        data = json.loads(text)
        change(data)
        return json.dumps(data).encode()

    return damage


def _first_trial(data: dict) -> dict:
    return data["arms"]["small"]["trials"][0]


STATE_CASES = [
    Case("truncated", lambda b: b[: len(b) // 2], 2, "the run state is damaged (not valid JSON at line"),
    Case("empty file", lambda b: b"", 2, "not valid JSON at line 1, column 1"),
    Case(
        "random bytes",
        lambda b: b"\xff" + random.Random(21).randbytes(300),
        2,
        "not UTF-8 text: byte 0xff at offset 0",
    ),
    Case("a list", lambda b: b"[]", 2, "a JSON list, not the object a run state is"),
    Case(
        "arms not an object",
        _edit_state(lambda d: d.update(arms=["small", "large"])),
        2,
        "(arms: Input should be an object",
    ),
    Case(
        "trial record without fields",
        _edit_state(lambda d: d["arms"]["small"]["trials"].append({"trial_id": "x"})),
        2,
        "arms.small.trials.2.arm: Field required",
    ),
    Case(
        "trial status unknown",
        _edit_state(lambda d: _first_trial(d).update(status="DONE")),
        2,
        "status 'DONE' is none of",
    ),
    Case(
        "trial metric out of range",
        _edit_state(lambda d: _first_trial(d)["metrics"].update(val_accuracy=9.99)),
        2,
        "metric val_accuracy is 9.99, outside [0, 1]",
    ),
    Case(
        "trial mapping not text",
        _edit_state(lambda d: d["arms"]["large"].update(trial={"t": 7})),
        2,
        "arms.large.trial.t: Input should be a valid string",
    ),
    Case("look cut short", _edit_state(lambda d: d.update(looks=[{"index": 1}])), 2, "look 1 cannot be read"),
]


@pytest.mark.parametrize("case", STATE_CASES, ids=str)
def test_a_damaged_run_state_refuses_the_run_naming_the_file(case: Case, left_copy: SharedRun, capsys):
    (path,) = (left_copy.state_dir / "state").glob("*.json")
    damaged = case.damage(path.read_bytes())
    path.write_bytes(damaged)
    code, lines = run_again(left_copy, capsys)
    assert code == case.exit_code, lines
    refused(code, lines, path, case.message)
    assert "delete the file to start this hypothesis over" in lines[0]
    assert path.read_bytes() == damaged  # nothing started: not even the state was rewritten
    assert running_runs(left_copy) == 0


def test_a_state_file_that_is_a_folder_refuses_the_run(left_copy: SharedRun, capsys):
    (path,) = (left_copy.state_dir / "state").glob("*.json")
    path.unlink()
    path.mkdir()
    code, lines = run_again(left_copy, capsys)
    refused(code, lines, path, "the run state is damaged (cannot be read (Is a directory))")


def test_fresh_starts_over_without_reading_a_damaged_state(left_copy: SharedRun):
    """What the message offers besides deleting the file: ``--fresh`` never reads it."""
    from orchestrator.execute.state import RunState

    (path,) = (left_copy.state_dir / "state").glob("*.json")
    path.write_bytes(b"[]")
    state = RunState.open(path.parent, "tiny-test", "default", "sha", fresh=True)
    assert state.arms() == {} and json.loads(path.read_text())["spec_sha256"] == "sha"


def test_a_state_dir_that_is_a_file_refuses_the_run(left_copy: SharedRun, capsys):
    """Found by the run lock (``execute/run_lock.py``), the first thing a run writes."""
    target = left_copy.folder / "not-a-folder"
    target.write_text("x")
    code, lines = run_again(replace(left_copy, state_dir=target), capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"--state-dir {target} is not a folder" in lines[0], lines[0]
    assert target.read_text() == "x" and running_runs(left_copy) == 0


def test_a_state_subfolder_that_is_a_file_refuses_the_run(left_copy: SharedRun, capsys):
    """A file where the run state's own folder should be: the first save names it."""
    folder = left_copy.state_dir / "state"
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    folder.write_text("x")
    code, lines = run_again(left_copy, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert (
        lines[0] == f"orchestrate: {folder}/tiny-test--default.json: cannot save the run state: "
        f"{folder} is a file, not a folder; move it away"
    )
    assert running_runs(left_copy) == 0


# -- the trial archive: a bad line is not reused, and said so -----------------------------------


def _edit_line(change: Callable[[dict], None]) -> Callable[[bytes], bytes]:
    """Change the first line's record; its checksum is left as it was written."""

    def damage(text: bytes) -> bytes:
        first, rest = text.split(b"\n", 1)
        record = json.loads(first)
        change(record)
        return json.dumps(record).encode() + b"\n" + rest

    return damage


def _raw_first_line(edit: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    def damage(text: bytes) -> bytes:
        first, rest = text.split(b"\n", 1)
        return edit(first) + b"\n" + rest

    return damage


def _accuracy_text(value: str) -> Callable[[bytes], bytes]:
    """val_accuracy written as ``value``, as it stands in the file (not JSON-encoded)."""
    return _raw_first_line(lambda line: re.sub(rb'"val_accuracy": [^,}]+', b'"val_accuracy": ' + value.encode(), line))


ARCHIVE_CASES = [
    Case(
        "accuracy 9.99",
        _edit_line(lambda r: r["metrics"].update(val_accuracy=9.99)),
        0,
        "metric val_accuracy is 9.99, outside [0, 1]",
    ),
    Case(
        "accuracy '0.39#8'",
        _edit_line(lambda r: r["metrics"].update(val_accuracy="0.39#8")),
        0,
        "metric val_accuracy is '0.39#8', not a number",
    ),
    Case("accuracy 0.39#8 unquoted", _accuracy_text("0.39#8"), 0, "not valid JSON (column"),
    Case("accuracy Infinity", _accuracy_text("Infinity"), 0, "metric val_accuracy is inf, not a finite number"),
    Case(
        "negative loss",
        _edit_line(lambda r: r["metrics"].update(val_loss=-0.5)),
        0,
        "metric val_loss is -0.5, outside [0, inf]",
    ),
    Case(
        "accuracy edited within range",
        _edit_line(lambda r: r["metrics"].update(val_accuracy=0.999)),
        0,
        "its checksum does not match its content",
    ),
    Case(
        "parameter a list",
        _edit_line(lambda r: r["params"].update(lr=[0.1, 0.2])),
        0,
        "parameter lr is [0.1, 0.2], not a single finite value",
    ),
    Case("status unknown", _edit_line(lambda r: r.update(status="DONE")), 0, "status 'DONE' is none of"),
    Case("field missing", _edit_line(lambda r: r.pop("metrics")), 0, "(no metrics)"),
    Case(
        "not UTF-8",
        _raw_first_line(lambda line: line.replace(b'"arm"', b'"\xe9arm"', 1)),
        0,
        "not UTF-8 text: byte 0xe9",
    ),
]


def archive_files(run: SharedRun) -> dict[str, Path]:
    """The archive file of each arm of the left run."""
    files = {}
    for path in (run.state_dir / "archive").glob("*.jsonl"):
        files[json.loads(path.read_text().splitlines()[0])["arm"]] = path
    assert sorted(files) == ["large", "small"]
    return files


@pytest.mark.parametrize("case", ARCHIVE_CASES, ids=str)
def test_a_damaged_archive_line_is_not_reused_and_is_named(case: Case, left_copy: SharedRun):
    path = archive_files(left_copy)["small"]
    archive = TrialArchive(path.parent)
    before = archive.load(path.stem)
    assert len(before.records) == 2 and before.skipped == []
    path.write_bytes(case.damage(path.read_bytes()))
    after = archive.load(path.stem)
    assert [r.trial_id for r in after.records] == [before.records[1].trial_id]  # the other line is reused
    (note,) = after.skipped
    assert note.startswith(f"{path}:1: archived trial not reused (") and case.message in note, note


def test_a_line_cut_short_by_a_crash_is_skipped_and_the_next_trial_starts_a_new_line(left_copy: SharedRun):
    path = archive_files(left_copy)["small"]
    archive = TrialArchive(path.parent)
    kept = archive.load(path.stem).records
    text = path.read_bytes()
    path.write_bytes(text[: len(text) - 40])  # the last line, cut mid-write
    cut = archive.load(path.stem)
    assert [r.trial_id for r in cut.records] == [kept[0].trial_id]
    (note,) = cut.skipped
    assert note.startswith(f"{path}:2: archived trial not reused (cut short, as by a crash while it was written)")
    archive.add(path.stem, [TrialRecord("new", "small", "trial", {"lr": 0.01}, COMPLETED, {"val_accuracy": 0.5})])
    after = archive.load(path.stem)
    assert [r.trial_id for r in after.records] == [kept[0].trial_id, "new"]
    assert len(after.skipped) == 1  # the cut line stays skipped; the new one is whole


def test_a_tampered_archive_line_is_not_reused_chosen_or_logged(left_copy: SharedRun, capsys):
    """End to end, the case of issue 21: a line edited to val_accuracy 9.99 was reused,
    became the arm's best and was logged to MLflow. Now it is skipped with a warning
    naming FILE:LINE, a new trial takes its place, and 9.99 is nowhere in the store."""
    path = archive_files(left_copy)["small"]
    tampered = json.loads(path.read_text().splitlines()[0])["trial_id"]
    path.write_bytes(_edit_line(lambda r: r["metrics"].update(val_accuracy=9.99))(path.read_bytes()))
    (state,) = (left_copy.state_dir / "state").glob("*.json")
    code, lines = run_again(left_copy, capsys, quiet=False)  # warnings are status lines: --quiet would hide them
    assert code == 0, lines
    assert any(
        f"{path}:1: archived trial not reused (metric val_accuracy is 9.99, outside [0, 1])" in line for line in lines
    ), lines

    db = sqlite3.connect(left_copy.folder / "mlflow.db")
    try:
        accuracies = [v for (v,) in db.execute("SELECT value FROM metrics WHERE key LIKE '%accuracy%'")]
    finally:
        db.close()
    assert accuracies and max(accuracies) <= 1.0  # neither logged for the trial nor as the arm's best_val_accuracy
    small = json.loads(state.read_text())["arms"]["small"]
    assert tampered not in {t["trial_id"] for t in small["trials"]}
    assert len(small["trials"]) == 2  # one reused, one new in its place
    assert running_runs(left_copy) == 0


# -- the tokenised cache: rebuilt, with a warning ----------------------------------------------


def _rewrite_cache(change: Callable[[PreparedTask], PreparedTask]) -> Callable[[Path], None]:
    """Arrays that load, with a checksum that matches, but that are not a tokenised task."""

    def damage(path: Path) -> None:
        from orchestrator.tasks.prepare import _load_cache

        _save_cache(path, change(_load_cache(path)))

    return damage


def _with_train(task: PreparedTask, **arrays: np.ndarray) -> PreparedTask:
    train = task.splits["train"]
    parts = {"ids": train.ids, "offsets": train.offsets, "labels": train.labels, **arrays}
    return PreparedTask(
        task.model_ref,
        task.dataset_ref,
        task.label_names,
        task.pad_id,
        {**task.splits, "train": TokenizedSplit(parts["ids"], parts["offsets"], parts["labels"])},
    )


def _flip_bit(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1 :]


def _labels_changed_checksum_kept(path: Path) -> None:
    with np.load(path) as stored:
        arrays = {name: stored[name] for name in stored.files}
    arrays["train_labels"] = 1 - arrays["train_labels"]
    np.savez(path, **arrays)


CACHE_CASES = [
    Case("truncated", lambda b: b[: len(b) // 2], 0, "BadZipFile"),
    Case("one bit flipped", _flip_bit, 0, "Bad CRC-32"),
    Case("empty", lambda b: b"", 0, "EOFError"),
]
CACHE_REWRITES = [
    (
        "offsets past the ids",
        _rewrite_cache(lambda t: _with_train(t, offsets=t.splits["train"].offsets + 1)),
        "train: offsets do not split",
    ),
    (
        "a label out of range",
        _rewrite_cache(lambda t: _with_train(t, labels=t.splits["train"].labels + 2)),
        "train: labels outside 0..1",
    ),
    ("arrays changed, checksum kept", _labels_changed_checksum_kept, "its arrays do not match their checksum"),
]


def _cache_of(run: SharedRun) -> tuple[Path, object]:
    (path,) = (run.state_dir / "cache").glob("*.npz")
    return path, load_hypothesis(run.spec).hypothesis.task


def _assert_rebuilt(run: SharedRun, path: Path, task: object, message: str, reference: PreparedTask) -> None:
    notes: list[str] = []
    prepared = prepare_task(task, run.spec.parent, path.parent, warn=notes.append)
    (note,) = notes
    assert (
        note.startswith(f"{path}: tokenised cache not used (") and message in note and note.endswith("rebuilding it")
    ), note
    for name, split in reference.splits.items():
        for part in ("ids", "offsets", "labels"):
            assert np.array_equal(getattr(prepared.splits[name], part), getattr(split, part)), (name, part)
    again: list[str] = []
    prepare_task(task, run.spec.parent, path.parent, warn=again.append)
    assert again == []  # the rebuilt cache is sound


@pytest.mark.parametrize("case", CACHE_CASES, ids=str)
def test_a_damaged_cache_is_rebuilt_with_a_warning(case: Case, left_copy: SharedRun):
    path, task = _cache_of(left_copy)
    reference = prepare_task(task, left_copy.spec.parent, None)
    path.write_bytes(case.damage(path.read_bytes()))
    _assert_rebuilt(left_copy, path, task, case.message, reference)


@pytest.mark.parametrize("name, damage, message", CACHE_REWRITES, ids=[c[0] for c in CACHE_REWRITES])
def test_a_cache_that_loads_but_lies_is_rebuilt(name, damage, message, left_copy: SharedRun):
    path, task = _cache_of(left_copy)
    reference = prepare_task(task, left_copy.spec.parent, None)
    damage(path)
    _assert_rebuilt(left_copy, path, task, message, reference)


def test_without_a_warn_callback_a_damaged_cache_is_a_python_warning(left_copy: SharedRun):
    path, task = _cache_of(left_copy)
    path.write_bytes(b"")
    with pytest.warns(UserWarning, match="tokenised cache not used"):
        prepare_task(task, left_copy.spec.parent, path.parent)


# -- the MLflow store: StoreError, exit 2 ---------------------------------------------------


def _overwrite_header(data: bytes) -> bytes:
    return b"\x13" * 100 + data[100:]


@pytest.mark.parametrize("command", ["run", "judge", "report"])
def test_a_store_whose_header_is_overwritten_refuses_every_command(command: str, left_copy: SharedRun, capsys):
    store = left_copy.folder / "mlflow.db"
    store.write_bytes(_overwrite_header(store.read_bytes()))
    code, lines = run_again(left_copy, capsys, command=command)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == (
        f"orchestrate: the MLflow store {left_copy.uri} is damaged (file is not a database); restore it from a copy, "
        "or name another store with --tracking-uri (a new file starts empty)"
    )


def _read_only(run: SharedRun) -> str:
    """The store opened read-only by sqlite itself: chmod does not stop root, who runs CI."""
    return f"sqlite:///file:{run.folder / 'mlflow.db'}?mode=ro&uri=true"


def test_a_read_only_store_refuses_the_run_before_anything_starts(left_copy: SharedRun, capsys):
    uri = _read_only(left_copy)
    code, lines = run_again(left_copy, capsys, uri=uri)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(
        f"orchestrate: the MLflow store {uri} is read-only (readonly database); make it writable"
    ), lines[0]
    assert running_runs(left_copy) == 0


def test_a_read_only_store_refuses_to_resume_an_interrupted_run(left_copy: SharedRun, capsys):
    """As a kill leaves it: the run state unfinished, its hypothesis run KILLED. Resuming
    reopens that run, which a read-only store refuses; it stays as it was."""
    (path,) = (left_copy.state_dir / "state").glob("*.json")
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "finished": False}))
    db = sqlite3.connect(left_copy.folder / "mlflow.db")
    with db:
        db.execute("UPDATE runs SET status = 'KILLED' WHERE run_uuid = ?", (data["parent_run_id"],))
    db.close()
    uri = _read_only(left_copy)
    code, lines = run_again(left_copy, capsys, uri=uri)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"orchestrate: the MLflow store {uri} is read-only"), lines[0]
    assert Tracker(left_copy.uri).run_status(data["parent_run_id"]) == "KILLED" and running_runs(left_copy) == 0


def test_a_read_only_store_still_judges(left_copy: SharedRun, capsys):
    """``judge`` only reads (unless --spec changes the claims): a read-only store is fine."""
    code, lines = run_again(left_copy, capsys, command="judge", uri=_read_only(left_copy))
    assert code == 0, lines


def test_a_full_store_fails_the_write_with_a_store_error_and_the_run_can_be_closed(left_copy: SharedRun):
    """The disk is full: sqlite's own limit on the file's pages (``max_page_count``, set on
    every connection MLflow opens) gives sqlite's real "database or disk is full"."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def no_growth(connection, _record) -> None:  # room for a run, not for its 800 kB of params
        cursor = connection.cursor()
        pages = cursor.execute("PRAGMA page_count").fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count = {pages + 16}")
        cursor.close()

    event.listen(Engine, "connect", no_growth)
    try:
        tracker = Tracker(left_copy.uri)
        run_id = tracker.start_run(tracker.experiment_id("tiny-test"), "a run", {})
        with pytest.raises(
            StoreError, match=re.escape(f"the MLflow store {left_copy.uri} cannot be written: the disk is full")
        ):
            tracker.log_params(run_id, {f"p{i}": "x" * 400 for i in range(2000)})
        tracker.end_run(run_id, "FAILED")  # closing needs no new page
    finally:
        event.remove(Engine, "connect", no_growth)
    assert running_runs(left_copy) == 0


def test_the_corpus_has_the_cases_issue_21_asks_for():
    assert len(STATE_CASES) + len(ARCHIVE_CASES) + len(CACHE_CASES) + len(CACHE_REWRITES) >= 14
