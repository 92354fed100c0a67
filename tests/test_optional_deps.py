"""Optional extras: an arm whose method needs a package that is not installed is refused
before anything starts, and an arm whose every trial failed is searched again on resume
(the user installed what was missing)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from orchestrator.cli import main

ROOT = Path(__file__).resolve().parents[1]
QLORA = ROOT / "hypotheses" / "qlora_adalora.yaml"
INSTALL = "pip install 'hypothesis-orchestrator[quant]'"


@pytest.fixture
def without_bitsandbytes(monkeypatch):
    """bitsandbytes as on a machine without the ``quant`` extra: a ``None`` entry in
    ``sys.modules`` makes ``find_spec`` answer None and ``import`` fail (the mechanism
    ``orchestrator.trial.worker_imports`` uses in workers)."""
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)


def _line_of_arm(path: Path, arm: str) -> int:
    return next(
        number for number, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith(f"{arm}:")
    )


def test_the_quantised_method_declares_bitsandbytes_and_its_extra():
    from methods import get_method
    from methods.base import Requirement

    assert get_method("qlora_adalora").requires == (Requirement("bitsandbytes", extra="quant"),)
    assert Requirement("bitsandbytes", extra="quant").install_command == INSTALL
    assert get_method("lora").requires == ()


def test_an_installed_requirement_is_found_without_importing_it(monkeypatch):
    from methods.base import Requirement

    monkeypatch.delitem(sys.modules, "bitsandbytes", raising=False)
    assert Requirement("bitsandbytes", extra="quant").is_installed()
    assert "bitsandbytes" not in sys.modules  # find_spec only: importing it costs seconds
    assert not Requirement("no_such_package_anywhere", extra="quant").is_installed()


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_validate_and_plan_refuse_the_arm_at_its_line_and_name_the_install_command(
    command, without_bitsandbytes, capsys
):
    args = [command, str(QLORA)] + (["--profile", "smoke"] if command == "plan" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    line = _line_of_arm(QLORA, "qlora_adalora")
    expected = (
        f"{QLORA}:{line}: arms.qlora_adalora.method: "
        f"method 'qlora_adalora' needs bitsandbytes, which is not installed: {INSTALL}"
    )
    assert expected in err.splitlines()
    assert "arms.adalora" not in err  # the float arm needs nothing optional


def test_run_refuses_before_anything_starts(without_bitsandbytes, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "run",
            str(QLORA),
            "--profile",
            "smoke",
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
            "--state-dir",
            str(tmp_path / "state"),
            "--quiet",
        ]
    )
    assert code == 2
    assert INSTALL in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no MLflow store, no run state, no Ray folder


def test_with_the_extra_installed_the_file_validates():
    assert main(["validate", str(QLORA)]) == 0


def test_rejudging_reads_the_spec_without_the_extra(without_bitsandbytes):
    """Judging and naming a hypothesis train nothing: they must not need bitsandbytes."""
    from orchestrator.spec.loader import load_hypothesis

    assert load_hypothesis(QLORA, "smoke", check_requirements=False).hypothesis.name == "qlora-adalora"


# -- resume: an arm whose every trial failed is not a finished arm ----------------------------
RETRY = """\
name: retry-test
statement: an arm whose every trial failed is searched again on resume
task: {model: random:bert-tiny, dataset: synthetic:polarity, max_length: 32,
       train_examples: 96, val_examples: 32, test_examples: 32}
arms:
  fine: {method: lora, fixed: {r: 2}}
  late: {method: failing, fixed: {r: 2, mode: die_once, when: 1, marker: MARKER}}
training: {epochs: 1, batch_size: 32, lr: 1.0e-2}
search:
  sampler: random
  trials_per_arm: 1
  max_concurrent: 1
  scheduler: fifo
  max_retries: 0   # the lost worker is not retried: the arm's only trial fails
confirm: {seeds: 1}
expected:
  - late.flops_ratio <= fine.flops_ratio * 2
"""


def _retry_plan(tmp_path: Path):
    from orchestrator.plan import make_plan
    from orchestrator.spec.loader import load_hypothesis

    spec = tmp_path / "retry.yaml"
    spec.write_text(RETRY.replace("MARKER", str(tmp_path / "died-once")))
    return make_plan(load_hypothesis(spec))


def test_an_arm_whose_trials_all_failed_is_searched_again_on_resume(tmp_path):
    """State level, no Ray: the first run searched both arms and every trial of ``late``
    failed (an ImportError, say); the rerun prepares ``late`` with a new search request
    and a new Tuner, ``fine`` with none."""
    from helpers import new_mlflow_store
    from orchestrator.execute.mlflow_runs import open_hypothesis_run
    from orchestrator.execute.progress import Progress
    from orchestrator.execute.run_context import RunContext
    from orchestrator.execute.runner import _prepare_arm
    from orchestrator.execute.state import RunState
    from orchestrator.execute.winners import AllTrialsFailedError, pick_winner
    from orchestrator.results import COMPLETED, FAILED, TrialRecord
    from orchestrator.tracking import Tracker

    plan = _retry_plan(tmp_path)
    tracker = Tracker(new_mlflow_store(tmp_path))
    experiment_id = tracker.experiment_id(plan.name)

    def prepare(state: RunState) -> dict:
        parent = open_hypothesis_run(tracker, experiment_id, plan, state)
        run = RunContext(plan, tracker, experiment_id, parent, state, "", Progress(quiet=True), None, None, "data")
        return {a.arm: _prepare_arm(a, run) for a in plan.arms}

    first = RunState.open(tmp_path / "state", plan.name, plan.profile, plan.spec_sha256, fresh=False)
    prepared = prepare(first)
    failed_run = tracker.start_run(experiment_id, "late 1", {}, prepared["late"].arm_run)
    tracker.end_run(failed_run, FAILED)
    outcomes = {
        "fine": TrialRecord("t1", "fine", "trial", {"r": 2}, COMPLETED, {"val_accuracy": 0.6}),
        "late": TrialRecord(
            "t2",
            "late",
            "trial",
            {"r": 2},
            FAILED,
            error="ImportError: requires bitsandbytes",
            mlflow_run_id=failed_run,
        ),
    }
    for arm, record in outcomes.items():  # what _search_arms stores when the search Tuner returns
        first.set_trial_run(arm, "trial", record.trial_id, record.mlflow_run_id or "")
        first.set_record(arm, "trial", record)
        first.finish_search(arm, [record])
        first.set_callback_key(arm, "key-of-the-first-tuner")
    with pytest.raises(AllTrialsFailedError, match="ImportError"):
        pick_winner(tracker, first, prepared["late"].plan, prepared["late"].arm_run)

    resumed = RunState.open(tmp_path / "state", plan.name, plan.profile, plan.spec_sha256, fresh=False)
    again = prepare(resumed)
    assert again["fine"].request is None  # finished: not searched again
    assert again["late"].request is not None and again["late"].request.new_trials == 1
    late = resumed.arm("late")
    assert not late.search_done and late.search_callback_key is None  # a new Tuner, not the finished one restored
    assert again["late"].request.recorder.all_records() == []  # the failure is not carried into the new search
    assert tracker.run_status(failed_run) == FAILED  # ... it stays in MLflow
    assert "orchestrate.error" not in tracker.get_run(again["late"].arm_run).data.tags


@pytest.mark.slow
def test_a_rerun_retries_the_failed_arm_and_reaches_a_verdict(tmp_path, shared_ray):
    """For real: the first run's only ``late`` trial loses its worker (not retried) and
    the run ends without a verdict; the same command again (the cause is gone: the
    marker exists) searches ``late`` again, confirms it and judges."""
    from mlflow.tracking import MlflowClient

    from helpers import new_mlflow_store

    plan = _retry_plan(tmp_path)
    uri = new_mlflow_store(tmp_path)
    command = ["run", plan.spec_path, "--tracking-uri", uri, "--state-dir", str(tmp_path / "state"), "--quiet"]
    assert main(command) == 1
    assert main(command) == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("retry-test")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    late_trials = sorted(
        (
            r
            for r in runs
            if r.data.tags.get("orchestrate.level") == "trial" and r.data.tags.get("orchestrate.arm") == "late"
        ),
        key=lambda r: r.info.start_time,
    )
    assert [r.info.status for r in late_trials] == ["FAILED", "FINISHED"]
    fine_trials = [
        r
        for r in runs
        if r.data.tags.get("orchestrate.level") == "trial" and r.data.tags.get("orchestrate.arm") == "fine"
    ]
    assert len(fine_trials) == 1  # the finished arm was not searched again
    parent = next(r for r in runs if r.data.tags.get("orchestrate.level") == "hypothesis")
    assert parent.info.status == "FINISHED" and "verdict.0" in parent.data.tags
