"""The trial recorder across a kill: what a resumed driver finds in MLflow is complete.

A driver creates a trial's MLflow run, saves its id, then logs its parameters. A SIGKILL
between the last two steps cannot be timed for real (a window of milliseconds; CI once
hit it in test_resume), so here the kill is an exception raised from the parameter
logging, the one fault this file injects. The store, the state file and the recorder are
the real ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import new_mlflow_store
from orchestrator.execute.mlflow_runs import close_stale as _close_stale
from orchestrator.execute.recorder import TrialRecorder
from orchestrator.execute.state import RunState
from orchestrator.tracking import Tracker
from orchestrator.trial.trainable import SEED_KEY


class Killed(BaseException):
    """The driver's death, at one chosen line."""


def recorder(tracker: Tracker, experiment: str, parent: str, state: RunState) -> TrialRecorder:
    return TrialRecorder(
        tracker, experiment, parent, "small", "confirm", 1, [], state, None, {}, [], static_params={"lr": 0.01}
    )


def test_a_trial_killed_before_its_params_were_logged_gets_them_when_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = Tracker(new_mlflow_store(tmp_path))
    experiment = tracker.experiment_id("recorder")
    parent = tracker.start_run(experiment, "small (lora)", {})
    state = RunState.open(tmp_path / "state", "h", "default", "sha", fresh=False)
    config = {SEED_KEY: 1000, "rank": 4}

    def killed(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(tracker, "log_params", killed)
        with pytest.raises(Killed):
            recorder(tracker, experiment, parent, state).started("t1", config)
    (run_id,) = state.trial_runs("small", "confirm").values()
    assert tracker.get_run(run_id).data.params == {}  # the window: a run, its id saved, no params

    # the next driver: state read back from disk, stale runs closed, the trial started again
    state = RunState.open(tmp_path / "state", "h", "default", "sha", fresh=False)
    _close_stale(tracker, state.trial_runs("small", "confirm"))
    resumed = recorder(tracker, experiment, parent, state)
    resumed.started("t1", config)
    resumed.result("t1", {"epoch": 1, "test_accuracy": 0.75})
    resumed.completed("t1", None)

    run = tracker.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.01", "rank": "4", "seed": "1000"}
    assert run.data.tags["orchestrate.resumed"] == "true"
    assert list(state.trial_runs("small", "confirm").values()) == [run_id]  # the same run, not a second one


def test_a_report_is_one_write_to_the_store_with_its_metrics_runtime_params_and_node_tags(tmp_path: Path) -> None:
    """Each write is a store transaction (docs/scale.md: the driver's largest per-trial cost
    at 32 concurrent trials): a trial's first report carries its metrics, the params it
    ran with and the node it ran on in one request, and every later report one more."""
    from orchestrator.results import TRIAL_PARAM_PREFIX

    tracker = Tracker(new_mlflow_store(tmp_path))
    experiment = tracker.experiment_id("recorder")
    parent = tracker.start_run(experiment, "small (lora)", {})
    state = RunState.open(tmp_path / "state", "h", "default", "sha", fresh=False)
    trial = recorder(tracker, experiment, parent, state)
    trial.started("t1", {SEED_KEY: 1000, "rank": 4})
    batches = []
    real = tracker.client.log_batch
    tracker.client.log_batch = lambda *args, **kwargs: batches.append(kwargs) or real(*args, **kwargs)  # a spy
    report = {"node_ip": "127.0.0.1", "hostname": "here", TRIAL_PARAM_PREFIX + "precision": "fp32"}
    trial.result("t1", {"epoch": 1, "test_accuracy": 0.5, **report})
    trial.result("t1", {"epoch": 2, "test_accuracy": 0.75, **report})
    assert len(batches) == 2
    first, second = batches
    assert {m.key for m in first["metrics"]} == {"epoch", "test_accuracy"}
    assert [(p.key, p.value) for p in first["params"]] == [("precision", "fp32")]
    assert {t.key for t in first["tags"]} == {"orchestrate.node_ip", "orchestrate.hostname"}
    assert second["params"] == [] and second["tags"] == []  # already logged: not again
    run = tracker.get_run(state.trial_run("small", "confirm", "t1"))
    assert run.data.params["precision"] == "fp32" and run.data.tags["orchestrate.node_ip"] == "127.0.0.1"
    assert run.data.metrics["test_accuracy"] == 0.75
    assert [(m.step, m.value) for m in tracker.client.get_metric_history(run.info.run_id, "test_accuracy")] == [
        (1, 0.5),
        (2, 0.75),
    ]
