"""Re-running a hypothesis with more trials reuses the finished ones."""

from __future__ import annotations

import json

import pytest

from helpers import TINY_HYPOTHESIS, new_mlflow_store
from orchestrator.execute.archive import TrialArchive, search_identity
from orchestrator.plan import make_plan
from orchestrator.results import COMPLETED, FAILED, INFEASIBLE, STOPPED, TrialRecord
from orchestrator.spec.loader import load_hypothesis


def plan_of(write_yaml, text: str, name: str = "h.yaml"):
    return make_plan(load_hypothesis(write_yaml(text, name)))


def test_the_identity_ignores_trial_counts_and_samplers_but_not_the_recipe(write_yaml):
    base = plan_of(write_yaml, TINY_HYPOTHESIS)
    ident = search_identity(base, base.arms[0], "data")
    more = plan_of(
        write_yaml,
        TINY_HYPOTHESIS.replace("trials_per_arm: 2", "trials_per_arm: 9").replace("sampler: tpe", "sampler: gp"),
        "b.yaml",
    )
    assert search_identity(more, more.arms[0], "data") == ident
    for change in (("lr: 1.0e-2", "lr: 2.0e-2"), ("r: 2}", "r: 4}"), ("max_length: 32", "max_length: 48")):
        other = plan_of(write_yaml, TINY_HYPOTHESIS.replace(*change), "c.yaml")
        assert search_identity(other, other.arms[0], "data") != ident, change
    assert search_identity(base, base.arms[0], "other data") != ident
    assert search_identity(base, base.arms[1], "data") != ident  # another arm


def test_the_archive_keeps_reusable_trials_once_and_survives_a_torn_line(tmp_path):
    archive = TrialArchive(tmp_path)
    records = [
        TrialRecord(f"t{i}", "a", "trial", {"r": i}, status, {"val_accuracy": 0.5})
        for i, status in enumerate((COMPLETED, FAILED, STOPPED, INFEASIBLE))
    ]
    archive.add("x", records)
    archive.add("x", records)  # twice: nothing doubles
    with open(tmp_path / "x.jsonl", "a") as out:
        out.write('{"trial_id": "torn", "arm"')  # a crash mid-write
    loaded = archive.load("x")
    assert [r.trial_id for r in loaded.records] == ["t0", "t2", "t3"]  # FAILED trials run again
    assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 4
    assert archive.load("unknown").records == []


@pytest.mark.slow
def test_more_trials_reuse_the_finished_ones_and_only_the_new_ones_train(tmp_path, shared_ray):
    from mlflow.tracking import MlflowClient

    from orchestrator.cli import main

    spec = tmp_path / "tiny.yaml"
    text = TINY_HYPOTHESIS.replace("  large: {method: lora, fixed: {r: 8}}\n", "").replace(
        "  small: {method: lora, fixed: {r: 2}}\n", "  small: {method: lora}\n"
    )
    text = text[: text.index("expected:")] + "expected:\n  - small.test_accuracy >= 0\n"
    uri, state = new_mlflow_store(tmp_path), str(tmp_path / "state")
    spec.write_text(text)
    assert main(["run", str(spec), "--tracking-uri", uri, "--state-dir", state, "--quiet"]) == 0
    spec.write_text(text.replace("trials_per_arm: 2", "trials_per_arm: 3"))
    assert main(["run", str(spec), "--tracking-uri", uri, "--state-dir", state, "--quiet"]) == 0

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny-test")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    first, second = sorted(
        (r for r in runs if r.data.tags.get("orchestrate.level") == "hypothesis"), key=lambda r: r.info.start_time
    )

    def trials_under(parent):
        (arm,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        return [
            r
            for r in runs
            if r.data.tags.get("mlflow.parentRunId") == arm.info.run_id
            and r.data.tags.get("orchestrate.level") == "trial"
        ]

    old, new = trials_under(first), trials_under(second)
    assert len(old) == 2 and len(new) == 3
    reused = [r for r in new if "orchestrate.reused_from" in r.data.tags]
    assert sorted(r.data.tags["orchestrate.reused_from"] for r in reused) == sorted(r.info.run_id for r in old)
    assert all(
        r.data.metrics["val_accuracy"]
        == next(o for o in old if o.info.run_id == r.data.tags["orchestrate.reused_from"]).data.metrics["val_accuracy"]
        for r in reused
    )
    trained = [r for r in new if "orchestrate.reused_from" not in r.data.tags]
    assert len(trained) == 1 and "train_time_s" in trained[0].data.metrics
    (archive,) = (tmp_path / "state" / "archive").glob("*.jsonl")
    assert len(archive.read_text().splitlines()) == 3
    # --fresh starts over on purpose: nothing reused
    assert main(["run", str(spec), "--tracking-uri", uri, "--state-dir", state, "--quiet", "--fresh"]) == 0
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    latest = max(
        (r for r in runs if r.data.tags.get("orchestrate.level") == "hypothesis"), key=lambda r: r.info.start_time
    )
    assert not any("orchestrate.reused_from" in r.data.tags for r in trials_under(latest))
    assert json.loads(archive.read_text().splitlines()[0])["status"] == COMPLETED
