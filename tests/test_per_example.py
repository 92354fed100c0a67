"""Per-example records of confirmation runs: written by the trial, read back by the judge.

A confirmation run keeps the outcome of each held-out example (``per_example/<split>.json``
in its artifacts) so the judge can count the test examples' sampling variance and pair
arms example by example; ``evidence.per_example_outcomes`` reads them back from MLflow and
gives up a metric, with a note, when the runs cannot be compared example by example.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import new_mlflow_store
from methods import register
from methods.lora import LoRA
from orchestrator.judge.evidence import per_example_outcomes
from orchestrator.spec.models import TaskSpec, TrainingSpec
from orchestrator.tasks.prepare import prepare_task
from orchestrator.tracking import Tracker
from orchestrator.trial.per_example import PER_EXAMPLE_FOLDER, PerExampleRecord
from orchestrator.trial.training import TrialSetup, run_trial


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    task = TaskSpec(
        model="random:bert-tiny",
        dataset="synthetic:polarity",
        max_length=32,
        train_examples=64,
        val_examples=32,
        test_examples=48,
    )
    return prepare_task(task, Path("."), tmp_path_factory.mktemp("cache"))


SEARCH = TrialSetup(
    arm="a",
    method="lora",
    model="random:bert-tiny",
    metric="accuracy",
    training=TrainingSpec(epochs=1, batch_size=16, lr=1e-2),
    fixed={"r": 4},
)
CONFIRM = replace(SEARCH, confirm=True, final_split="test")


def trial_and_record(setup: TrialSetup, seed: int, data, workdir: Path) -> tuple[dict, PerExampleRecord | None]:
    """The run's final metrics and the record in the artifacts it reported last (None: none)."""
    folders: list[Path] = []
    final = run_trial(setup, {}, seed, data, lambda metrics, artifacts: folders.append(artifacts), workdir)
    files = sorted((folders[-1] / PER_EXAMPLE_FOLDER).glob("*.json"))
    assert len(files) <= 1
    return final, PerExampleRecord.from_json(files[0].read_text()) if files else None


# -- written by the trial ------------------------------------------------------------------
def test_a_confirmation_run_records_each_test_example_with_the_reported_means(data, tmp_path):
    final, record = trial_and_record(CONFIRM, 1000, data, tmp_path)
    raw = json.loads((tmp_path / "artifacts" / PER_EXAMPLE_FOLDER / "test.json").read_text())
    assert raw["format"] == 1 and raw["split"] == "test" and raw["metric"] == "test_accuracy" and raw["n"] == 48
    assert record.per_example_means()["test_accuracy"].mean() == final["test_accuracy"]  # exactly
    assert record.per_example_means()["test_loss"].mean() == pytest.approx(final["test_loss"], abs=1e-5)
    gold = data.splits["test"].labels
    assert record.labels_sha256 == hashlib.sha256(gold.astype("int64").tobytes()).hexdigest()
    assert record.correct == "".join("1" if p == g else "0" for p, g in zip(record.pred, gold, strict=True))


def test_two_seeds_record_the_same_examples_in_the_same_order(data, tmp_path):
    _, first = trial_and_record(CONFIRM, 1000, data, tmp_path / "a")
    _, second = trial_and_record(CONFIRM, 1001, data, tmp_path / "b")
    assert first.labels_sha256 == second.labels_sha256 and first.n == second.n
    assert first.loss != second.loss  # two trained models, not one record twice


def test_a_search_trial_records_no_examples(data, tmp_path):
    final, record = trial_and_record(SEARCH, 0, data, tmp_path)
    assert record is None and "val_accuracy" in final


def test_the_record_is_of_the_evaluation_reported_not_of_the_last_one_run(data, tmp_path):
    """DyLoRA evaluates again at every eval rank (renamed ``test_accuracy_r<b>``): the record
    stays with the reported eval rank, though the rank-1 pass runs last."""
    dylora = replace(CONFIRM, method="dylora", fixed={"r_max": 4, "eval_ranks": [4, 1]})
    final, record = trial_and_record(dylora, 1000, data, tmp_path)
    assert final["test_loss_r1"] != final["test_loss"]
    assert record.per_example_means()["test_loss"].mean() == pytest.approx(final["test_loss"], abs=1e-5)
    assert record.per_example_means()["test_accuracy"].mean() == final["test_accuracy"]


@register
class _LoraReportingItsShiftedHead(LoRA):
    """Overwrites the reported test metrics with a second evaluation, whose logits the
    head's bias shifts towards label 0: the record must follow the overwrite."""

    name = "_lora_reporting_its_shifted_head"

    def extra_evaluations(self, model, evaluate):
        import torch

        bias = next(
            p
            for name, p in model.named_parameters()
            if p.requires_grad and name.endswith("classifier.modules_to_save.default.bias")
        )
        saved = bias.detach().clone()
        with torch.no_grad():
            bias[0] += 3.0
        try:
            return evaluate(model)
        finally:
            with torch.no_grad():
                bias.copy_(saved)


def test_an_evaluation_that_overwrites_the_reported_metric_takes_the_record_with_it(data, tmp_path):
    plain, _ = trial_and_record(CONFIRM, 1000, data, tmp_path / "plain")
    shifted, record = trial_and_record(
        replace(CONFIRM, method=_LoraReportingItsShiftedHead.name), 1000, data, tmp_path / "shifted"
    )
    assert shifted["test_loss"] != plain["test_loss"]
    assert record.per_example_means()["test_loss"].mean() == pytest.approx(shifted["test_loss"], abs=1e-5)
    assert record.per_example_means()["test_accuracy"].mean() == shifted["test_accuracy"]


# -- read back by the judge ----------------------------------------------------------------
def record_of(correct: str, labels: bytes = b"same examples") -> PerExampleRecord:
    return PerExampleRecord(
        split="test",
        metric="test_accuracy",
        labels_sha256=hashlib.sha256(labels).hexdigest(),
        correct=correct,
        pred=[int(c) for c in correct],
        loss=[0.25 if c == "1" else 1.5 for c in correct],
    )


@pytest.fixture
def store(tmp_path):
    tracker = Tracker(new_mlflow_store(tmp_path))
    experiment = tracker.experiment_id("per-example")

    def log(arm: str, seed: int, per_example: PerExampleRecord | None, status: str = "COMPLETED") -> SimpleNamespace:
        """A confirmation run as the driver keeps it, its record logged as the recorder logs a trial's artifacts."""
        run_id = tracker.start_run(experiment, f"{arm}-{seed}", {})
        folder = tmp_path / run_id
        folder.mkdir()
        (folder / "metrics_final.txt").write_text("")
        metrics = {}
        if per_example is not None:
            per_example.write(folder)
            means = per_example.per_example_means()
            metrics = {
                "test_accuracy": float(means["test_accuracy"].mean()),
                "test_loss": float(means["test_loss"].mean()),
            }
        tracker.log_artifacts(run_id, folder)
        return SimpleNamespace(seed=seed, status=status, error=None, metrics=metrics, mlflow_run_id=run_id)

    return tracker, log


def test_the_judge_reads_back_every_runs_per_example_values(store):
    tracker, log = store
    runs = {
        "lora": [log("lora", 1, record_of("1101")), log("lora", 2, record_of("1111"))],
        "full": [log("full", 1, record_of("0101"))],
    }
    outcomes, notes = per_example_outcomes(tracker, runs)
    assert notes == []
    assert outcomes["lora"]["test_accuracy"][1].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert outcomes["full"]["test_accuracy"][1].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert outcomes["lora"]["test_loss"][2].tolist() == [0.25] * 4
    for arm, runs_of_arm in runs.items():  # each array's mean is the run's reported metric
        for run in runs_of_arm:
            assert outcomes[arm]["test_accuracy"][run.seed].mean() == run.metrics["test_accuracy"]


def test_a_report_run_record_is_read_by_its_run_id(store):
    tracker, log = store
    logged = log("lora", 1, record_of("10"))
    as_report_has_it = SimpleNamespace(
        seed=1, status="COMPLETED", error=None, metrics=logged.metrics, run_id=logged.mlflow_run_id
    )
    outcomes, notes = per_example_outcomes(tracker, {"lora": [as_report_has_it]})
    assert outcomes["lora"]["test_accuracy"][1].tolist() == [1.0, 0.0] and notes == []


def test_a_failed_run_is_not_read(store):
    tracker, log = store
    failed = SimpleNamespace(seed=2, status="FAILED", error="NonFiniteLossError: nan", metrics={}, mlflow_run_id=None)
    outcomes, notes = per_example_outcomes(tracker, {"lora": [log("lora", 1, record_of("10")), failed]})
    assert set(outcomes["lora"]["test_accuracy"]) == {1} and notes == []


def test_a_run_without_a_record_leaves_the_metric_out_for_every_arm_with_a_note(store):
    tracker, log = store
    older = log("lora", 1001, None)
    older.metrics = {"test_accuracy": 0.5, "test_loss": 0.9}  # logged before runs kept their examples
    runs = {"lora": [log("lora", 1000, record_of("10")), older], "full": [log("full", 1000, record_of("11"))]}
    outcomes, notes = per_example_outcomes(tracker, runs)
    assert outcomes == {"lora": {}, "full": {}}
    assert notes == [
        "test_accuracy judged on seed variance only: lora seed 1001 has no per-example record",
        "test_loss judged on seed variance only: lora seed 1001 has no per-example record",
    ]


def test_runs_on_different_examples_leave_the_metric_out_with_a_note(store):
    tracker, log = store
    runs = {
        "lora": [log("lora", 1, record_of("10"))],
        "full": [log("full", 1, record_of("10", labels=b"other examples"))],
    }
    outcomes, notes = per_example_outcomes(tracker, runs)
    assert outcomes == {"lora": {}, "full": {}}
    assert len(notes) == 2 and all(
        "the runs scored different examples: lora seed 1 (2 examples" in note for note in notes
    )


def test_a_record_that_does_not_give_the_reported_value_leaves_the_metric_out(store):
    tracker, log = store
    disagreeing = log("full", 1, record_of("11"))
    disagreeing.metrics = {**disagreeing.metrics, "test_accuracy": 0.5}
    outcomes, notes = per_example_outcomes(tracker, {"lora": [log("lora", 1, record_of("10"))], "full": [disagreeing]})
    assert "test_accuracy" not in outcomes["lora"] and set(outcomes["full"]) == {"test_loss"}
    assert notes == [
        "test_accuracy judged on seed variance only: "
        "full seed 1's per-example record does not give its reported test_accuracy"
    ]


@pytest.mark.slow
def test_a_real_runs_confirmation_runs_hand_the_judge_their_test_examples(shared_run):
    """Through Ray's checkpoint and the recorder into MLflow, and back via the report's
    run records: each confirmation run's 64 test examples, means as reported."""
    from orchestrator.report.collect import collect_summary, resolve_hypothesis_run

    tracker = Tracker(shared_run.uri)
    summary = collect_summary(tracker, resolve_hypothesis_run(tracker, "tiny-test"), with_images=False)
    arms = {arm.arm: arm.usable_confirms() for arm in summary.arms if arm.arm in ("small", "large")}
    outcomes, notes = per_example_outcomes(tracker, arms)
    assert notes == []
    for arm, confirms in arms.items():
        assert len(confirms) == 2
        for run in confirms:
            accuracy = outcomes[arm]["test_accuracy"][run.seed]
            assert len(accuracy) == 64 and accuracy.mean() == run.metrics["test_accuracy"]
            assert outcomes[arm]["test_loss"][run.seed].mean() == pytest.approx(run.metrics["test_loss"], abs=1e-5)
