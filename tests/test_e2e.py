"""End to end, for real: a tiny hypothesis through Ray Tune, MLflow (sqlite) and the judge."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def finished_run(shared_run):
    """The session's shared real run (conftest.py: arms small, large and a `flaky` one with
    the `failing` method, 3 trials each, random sampler), read back from MLflow."""
    client = MlflowClient(shared_run.uri)
    experiment = client.get_experiment_by_name("tiny-test")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return shared_run.exit_code, client, runs


def by_level(runs, level):
    return [r for r in runs if r.data.tags.get("orchestrate.level") == level]


def test_run_exits_zero(finished_run):
    code, _, _ = finished_run
    assert code == 0


def test_run_tree_is_hypothesis_then_arm_then_trial_and_confirm(finished_run):
    _, _, runs = finished_run
    (parent,) = by_level(runs, "hypothesis")
    arms = by_level(runs, "arm")
    assert sorted(r.data.tags["orchestrate.arm"] for r in arms) == ["flaky", "large", "small"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in arms)
    arm_ids = {r.data.tags["orchestrate.arm"]: r.info.run_id for r in arms}
    for level, per_arm in (("trial", 3), ("confirm", 2)):
        children = by_level(runs, level)
        for arm, arm_id in arm_ids.items():
            mine = [r for r in children if r.data.tags["orchestrate.arm"] == arm]
            assert len(mine) == per_arm, (level, arm)
            assert all(r.data.tags["mlflow.parentRunId"] == arm_id for r in mine)
    assert parent.data.tags["orchestrate.spec_sha256"] and parent.info.status == "FINISHED"


def test_trials_carry_params_and_per_epoch_metrics(finished_run):
    _, client, runs = finished_run
    trial = next(r for r in by_level(runs, "trial") if r.data.tags["orchestrate.arm"] == "small")
    assert trial.data.params["r"] == "2"
    assert {"val_accuracy", "val_loss", "flops_ratio", "trainable_params", "peak_rss_mb"} <= set(trial.data.metrics)
    history = client.get_metric_history(trial.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1]


def test_every_trained_run_records_the_precision_it_used(finished_run):
    _, _, runs = finished_run
    trained = [r for r in by_level(runs, "trial") + by_level(runs, "confirm") if r.info.status == "FINISHED"]
    assert trained
    for run in trained:
        assert run.data.params["precision"] in ("fp32", "bf16"), run.info.run_name
        assert run.data.params["precision_requested"] == "auto"
        assert run.data.params["precision_native"] == "true"


def test_a_failing_trial_is_recorded_failed_and_the_search_goes_on(finished_run):
    _, _, runs = finished_run
    flaky = [r for r in by_level(runs, "trial") if r.data.tags["orchestrate.arm"] == "flaky"]
    failed = [r for r in flaky if r.info.status == "FAILED"]
    finished = [r for r in flaky if r.info.status == "FINISHED"]
    assert failed and finished
    assert all("injected failure" in r.data.tags["orchestrate.error"] for r in failed)
    assert all(r.data.params["mode"] == "none" for r in finished)
    (arm,) = [r for r in by_level(runs, "arm") if r.data.tags["orchestrate.arm"] == "flaky"]
    assert arm.data.metrics["trials_failed"] == len(failed)


def test_confirmation_runs_use_fresh_seeds_on_the_test_split(finished_run):
    _, _, runs = finished_run
    confirms = by_level(runs, "confirm")
    assert {r.data.params["seed"] for r in confirms} == {"1000", "1001"}
    assert all("test_accuracy" in r.data.metrics for r in confirms)
    assert all(r.data.tags["orchestrate.confirm_split"] == "test" for r in confirms)


def test_verdicts_are_logged_on_the_hypothesis_run(finished_run):
    _, client, runs = finished_run
    (parent,) = by_level(runs, "hypothesis")
    assert parent.data.tags["verdict.0"] == "SUPPORTED: small.flops_ratio <= large.flops_ratio / 2"
    assert parent.data.metrics["claim_0_estimate"] == pytest.approx(0.25 - 1.0 / 2)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"verdicts.json", "plan.json", "expected.txt", "spec"} <= artifacts
