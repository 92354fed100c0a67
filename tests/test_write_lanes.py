"""Writes to a tracking server in the background (orchestrator/write_lanes.py and
``Tracker.writes_in_background``): in order per run, seen by every read, never lost when
the block ends by an interrupt, a failed write raised on the caller's thread.

A real sqlite store with the lanes forced on (``ORCHESTRATE_WRITE_LANES``) stands in
for a server here; tests/test_tracking_server.py runs whole searches against a real
PostgreSQL-backed server, where they are on by default.
"""

from __future__ import annotations

import functools
import random
import threading
import time

import pytest
from mlflow.exceptions import MlflowException

from orchestrator.errors import InputError
from orchestrator.tracking import SERVER_WRITE_LANES, WRITE_LANES_VARIABLE, Tracker, write_lanes
from orchestrator.write_lanes import WriteLanes


def test_each_keys_writes_run_in_order_and_keys_run_in_parallel():
    lanes, lock = WriteLanes(3), threading.Lock()
    seen: dict[str, list[int]] = {key: [] for key in "abcdef"}
    threads: set[str] = set()

    def write(key: str, number: int) -> None:
        time.sleep(random.random() / 500)
        with lock:
            seen[key].append(number)
            threads.add(threading.current_thread().name)

    for number in range(40):
        for key in seen:
            lanes.submit(key, functools.partial(write, key, number))
    lanes.close()
    assert all(numbers == list(range(40)) for numbers in seen.values())
    assert len(threads) > 1 and lanes.submitted == 240


def test_a_failed_write_is_raised_by_the_next_submit_and_the_lanes_go_on():
    lanes, done, gate = WriteLanes(1), [], threading.Event()

    def fail() -> None:
        gate.wait(5)
        raise RuntimeError("store refused")

    lanes.submit("run", fail)
    lanes.submit("run", lambda: done.append(1))  # queued before the failure was known
    gate.set()
    while not done:
        time.sleep(0.01)
    with pytest.raises(RuntimeError, match="store refused"):
        lanes.submit("run", lambda: done.append(2))
    lanes.submit("run", lambda: done.append(3))  # raised once: the caller decides what follows
    lanes.close()
    assert done == [1, 3]


def test_flush_raises_a_failed_write_and_close_can_only_log_it(caplog):
    lanes = WriteLanes(2)
    lanes.submit("a", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        lanes.flush()
    lanes.submit("b", lambda: 1 / 0)
    lanes.close(raise_failure=False)  # an exception is already on its way
    assert "failed while the run was stopping" in caplog.text


def test_lanes_by_store(monkeypatch, tmp_path):
    monkeypatch.delenv(WRITE_LANES_VARIABLE, raising=False)
    assert write_lanes(f"sqlite:///{tmp_path}/mlflow.db") == 0
    assert write_lanes(str(tmp_path / "mlruns")) == 0
    assert write_lanes("http://127.0.0.1:5000") == SERVER_WRITE_LANES
    monkeypatch.setenv(WRITE_LANES_VARIABLE, "0")
    assert write_lanes("https://mlflow.example.org") == 0
    monkeypatch.setenv(WRITE_LANES_VARIABLE, "four")
    with pytest.raises(InputError, match=f"{WRITE_LANES_VARIABLE}='four'"):
        Tracker(f"sqlite:///{tmp_path}/mlflow.db")  # before anything starts


@pytest.fixture
def tracker(monkeypatch, tmp_path) -> Tracker:
    monkeypatch.setenv(WRITE_LANES_VARIABLE, "2")
    return Tracker(f"sqlite:///{tmp_path}/mlflow.db")


def _trial(tracker: Tracker, experiment: str, number: int) -> str:
    """A trial's writes as the recorder makes them: params, three epochs, tags, end."""
    run = tracker.start_run(experiment, f"trial {number}", {"orchestrate.level": "trial"})
    tracker.log_params(run, {"lr": 0.001 * number, "r": 8})
    for epoch in (1, 2, 3):
        tracker.log_batch(run, {"val_accuracy": epoch / 10 + number}, tags={"epoch_seen": str(epoch)}, step=epoch)
    tracker.set_tags(run, {"orchestrate.status": "COMPLETED"})
    tracker.log_text(run, f"trial {number}", "note.txt")
    tracker.end_run(run, "FINISHED")
    return run


def test_inside_the_block_writes_are_queued_and_reads_see_them(tracker):
    experiment = tracker.experiment_id("lanes")
    with tracker.writes_in_background():
        runs = [_trial(tracker, experiment, number) for number in range(6)]
        assert tracker._lanes is not None and tracker._lanes.submitted == 6 * 7
        run = tracker.get_run(runs[0])  # a read: every queued write lands first
        assert run.info.status == "FINISHED" and run.data.params["r"] == "8"
    assert tracker._lanes is None
    for number, run_id in enumerate(runs):
        run = tracker.get_run(run_id)
        assert run.info.status == "FINISHED", "ended after its metrics and tags, in order"
        assert run.data.tags["epoch_seen"] == "3" and run.data.tags["orchestrate.status"] == "COMPLETED"
        assert tracker.metric_history(run_id, "val_accuracy") == {e: pytest.approx(e / 10 + number) for e in (1, 2, 3)}
        assert tracker.read_text(run_id, "note.txt") == f"trial {number}"


def test_an_interrupt_inside_the_block_loses_no_queued_write(tracker):
    experiment = tracker.experiment_id("lanes")
    with pytest.raises(KeyboardInterrupt), tracker.writes_in_background():
        runs = [_trial(tracker, experiment, number) for number in range(4)]
        raise KeyboardInterrupt
    assert [tracker.get_run(run).info.status for run in runs] == ["FINISHED"] * 4
    assert all(len(tracker.metric_history(run, "val_accuracy")) == 3 for run in runs)


def test_a_write_the_store_refuses_is_raised_on_the_callers_thread(tracker):
    experiment = tracker.experiment_id("lanes")
    deleted = tracker.start_run(experiment, "deleted", {})
    tracker.client.delete_run(deleted)  # MLflow refuses writes to a deleted run
    with pytest.raises(MlflowException, match="active"), tracker.writes_in_background():
        tracker.log_metrics(deleted, {"val_accuracy": 0.5}, step=1)  # queued: no error yet
        tracker.flush()


def test_outside_the_block_and_with_a_local_store_writes_are_made_at_once(monkeypatch, tmp_path):
    monkeypatch.delenv(WRITE_LANES_VARIABLE, raising=False)
    local = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = local.experiment_id("lanes")
    with local.writes_in_background():
        assert local._lanes is None
        run = local.start_run(experiment, "r", {})
        local.log_metrics(run, {"m": 1.0}, step=1)
        assert local.client.get_run(run).data.metrics == {"m": 1.0}


def test_a_full_backlog_makes_the_caller_wait_for_the_store():
    lanes, gate, done = WriteLanes(1, max_queued=2), threading.Event(), []
    lanes.submit("run", lambda: gate.wait(5))
    lanes.submit("run", lambda: done.append(1))
    waited = threading.Event()

    def third() -> None:
        lanes.submit("run", lambda: done.append(2))  # no free place until the first write ends
        waited.set()

    caller = threading.Thread(target=third)
    caller.start()
    assert not waited.wait(0.2), "a third write was queued behind a full backlog of two"
    gate.set()
    caller.join(5)
    lanes.close()
    assert waited.is_set() and done == [1, 2]
