"""The run state's typed fields: what a run saved is read back as it was, also from a
file the previous version wrote (its Tuner callback keys had names made at run time)."""

from __future__ import annotations

import json

from orchestrator.execute.state import RunState
from orchestrator.results import COMPLETED, FAILED, RunKind, TrialRecord


def _open(folder, fresh: bool = False) -> RunState:
    return RunState.open(folder, "h", "default", "sha", fresh=fresh)


def test_what_a_run_saved_is_read_back_typed(tmp_path):
    state = _open(tmp_path)
    record = TrialRecord("t1", "a", RunKind.TRIAL, {"r": 2}, COMPLETED, {"val_accuracy": 0.75}, mlflow_run_id="run-1")
    state.set_parent_run("parent", "7")
    state.set_arm_run("a", "arm-run")
    state.set_trial_run("a", RunKind.TRIAL, "t1", "run-1")
    state.set_record("a", RunKind.TRIAL, record)
    state.finish_search("a", [record])
    state.set_callback_key("a", "search-key")
    state.set_callback_key("a", "round-2-key", confirm_round=2)
    state.finish_confirm_round("a", 1, [TrialRecord("c1", "a", RunKind.CONFIRM, {}, seed=1000)])

    again = _open(tmp_path)
    assert (again.parent_run_id, again.experiment_id, again.arm("a").arm_run_id) == ("parent", "7", "arm-run")
    assert again.trial_run("a", RunKind.TRIAL, "t1") == "run-1"
    assert again.records("a", RunKind.TRIAL) == {"t1": record} and again.search_trials("a") == [record]
    assert again.search_finished("a")
    assert [again.callback_key("a", n) for n in (None, 1, 2)] == ["search-key", None, "round-2-key"]
    assert [r.seed for r in again.confirm_records("a")] == [1000] and again.confirm_round_done("a", 1)


def test_a_saved_record_is_a_copy(tmp_path):
    """The recorder goes on holding its record; a later change to it is not saved by accident."""
    state = _open(tmp_path)
    record = TrialRecord("t1", "a", RunKind.TRIAL, {}, COMPLETED, {"val_accuracy": 0.5})
    state.set_record("a", RunKind.TRIAL, record)
    record.metrics["val_accuracy"] = 0.9
    assert _open(tmp_path).records("a", RunKind.TRIAL)["t1"].metrics == {"val_accuracy": 0.5}


def test_a_state_of_the_previous_version_resumes_with_its_callback_keys(tmp_path):
    """A run interrupted under the previous version restores the same Tuners."""
    trial = {
        "trial_id": "t1",
        "arm": "a",
        "kind": "trial",
        "params": {},
        "status": FAILED,
        "metrics": {},
        "error": "boom",
        "seed": None,
        "mlflow_run_id": "run-1",
        "feasible": True,
        "reused_from": None,
        "runtime": {},
    }
    previous = {
        "spec_sha256": "sha",
        "hypothesis": "h",
        "profile": "default",
        "finished": False,
        "parent_run_id": "parent",
        "arms": {
            "a": {
                "trial": {"t1": "run-1"},
                "confirm": {},
                "records": {"trial": {"t1": trial}, "confirm": {}},
                "search_done": True,
                "trials": [trial],
                "arm_run_id": "arm-run",
                "trial_callback_key": "k-search",
                "confirm_callback_key": "k-round-1",
                "confirm_2_callback_key": "k-round-2",
            }
        },
    }
    (tmp_path / "h--default.json").write_text(json.dumps(previous))
    state = _open(tmp_path)
    assert state.parent_run_id == "parent"
    assert [state.callback_key("a", n) for n in (None, 1, 2)] == ["k-search", "k-round-1", "k-round-2"]
    assert state.searched_without_result("a")
    state.reopen_search("a")
    assert state.callback_key("a") is None and state.records("a", RunKind.TRIAL) == {}
    assert state.trial_runs("a", RunKind.TRIAL) == {"t1": "run-1"}  # the failed runs stay mapped
    saved = json.loads((tmp_path / "h--default.json").read_text())["arms"]["a"]
    assert "trial_callback_key" not in saved and saved["confirm_callback_keys"] == {"1": "k-round-1", "2": "k-round-2"}


def test_fresh_never_reads_the_saved_state(tmp_path):
    (tmp_path / "h--default.json").write_text("not json")
    assert _open(tmp_path, fresh=True).arms() == {}
