"""Trial faults: which failures are retried, the hang watchdog, and (slow, real Ray)
every injected fault recorded FAILED with its reason while the search goes on."""

from __future__ import annotations

import textwrap
import threading
import time

import pytest

from orchestrator.trial.faults import (
    ERROR_KEY,
    TRACE_KEY,
    MemoryLimitError,
    NonFiniteLossError,
    TrialHungError,
    TrialTimeoutError,
    failure_result,
    is_transient,
)
from orchestrator.trial.watchdog import HangWatchdog


def test_a_trials_own_faults_are_not_transient_and_lost_workers_are():
    from ray.exceptions import ActorDiedError, ObjectLostError

    for own in (
        RuntimeError("bug"),
        NonFiniteLossError("nan"),
        TrialTimeoutError("slow"),
        MemoryLimitError("big"),
        ValueError("x"),
    ):
        assert not is_transient(own), own
    assert is_transient(ConnectionResetError("peer gone"))
    assert is_transient(ActorDiedError())
    assert issubclass(ObjectLostError, Exception) and is_transient(ObjectLostError.__new__(ObjectLostError))


def test_failure_result_carries_the_reason_and_the_trace():
    try:
        raise NonFiniteLossError("non-finite loss (nan) at step 3, epoch 0")
    except NonFiniteLossError as exc:
        result = failure_result(exc)
    assert result[ERROR_KEY] == "NonFiniteLossError: non-finite loss (nan) at step 3, epoch 0"
    assert "Traceback" in result[TRACE_KEY] and "test_failure_result" in result[TRACE_KEY]


def test_the_watchdog_interrupts_a_python_hang_with_its_reason():
    started = time.monotonic()
    with (
        pytest.raises(TrialHungError, match=r"hung inside a step past its 0.5 s budget"),
        HangWatchdog(0.5, margin_s=0.1, grace_s=60),
    ):
        while True:
            sum(range(100))
    assert time.monotonic() - started < 5


def test_the_watchdog_stays_quiet_when_the_body_finishes_and_nothing_leaks_after():
    watchdog = HangWatchdog(0.3, margin_s=0.0, grace_s=60)
    with watchdog:
        time.sleep(0.01)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # past the budget: no exception may arrive late
        sum(range(100))
    assert not watchdog.fired
    assert not any(t.name == "orchestrate-hang-watchdog" and t.is_alive() for t in threading.enumerate())


def test_no_budget_no_watchdog_thread():
    with HangWatchdog(None) as watchdog:
        pass
    assert watchdog._thread is None


# -- for real: a search full of faults --------------------------------------------------
FAULTS = """\
name: faults-test
statement: every fault is recorded with its reason and the search goes on
task: {model: random:bert-tiny, dataset: synthetic:polarity, max_length: 32,
       train_examples: 96, val_examples: 32, test_examples: 32}
arms:
  nan: {method: failing, fixed: {r: 2, mode: nan, when: 1}}
  hang: {method: failing, fixed: {r: 2, mode: hang, when: 1}}
  stuck: {method: failing, fixed: {r: 2, mode: hang_native, when: 1}}
  hog: {method: failing, fixed: {r: 2, mode: memory, when: 1, hog_mb: 1024}}
  lost: {method: failing, fixed: {r: 2, mode: die_once, when: 1, marker: MARKER}}
training: {epochs: 1, batch_size: 32}
search:
  sampler: random
  trials_per_arm: 1
  max_concurrent: 1
  scheduler: fifo
  trial_timeout_s: 12   # a hang costs its budget (plus the watchdog's margin and grace) per attempt
  trial_memory_mb: 1200
  max_retries: 1
confirm: {seeds: 1}
"""


@pytest.mark.slow
def test_every_injected_fault_is_recorded_with_its_reason(tmp_path, shared_ray):
    from mlflow.tracking import MlflowClient

    from helpers import new_mlflow_store
    from orchestrator.cli import main

    spec = tmp_path / "faults.yaml"
    spec.write_text(textwrap.dedent(FAULTS).replace("MARKER", str(tmp_path / "died-once")))
    uri = new_mlflow_store(tmp_path)
    code = main(["run", str(spec), "--tracking-uri", uri, "--state-dir", str(tmp_path / "state"), "--quiet"])
    assert code != 0  # four arms have no trial to confirm: a clear error, not a verdict
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("faults-test")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    trials = {r.data.tags["orchestrate.arm"]: r for r in runs if r.data.tags.get("orchestrate.level") == "trial"}
    assert set(trials) >= {"nan", "hang", "stuck", "hog", "lost"}
    reasons = {arm: run.data.tags.get("orchestrate.error", "") for arm, run in trials.items()}
    assert reasons["nan"].startswith("NonFiniteLossError: non-finite loss")
    assert reasons["hang"].startswith("TrialHungError: trial hung inside a step past its 12 s budget")
    assert (
        reasons["stuck"].startswith("TrialHungError: hung inside a step past its 12 s budget")
        and "worker was ended" in reasons["stuck"]
    )
    assert reasons["hog"].startswith("MemoryLimitError: trial peaked at") and "1200 MB limit" in reasons["hog"]
    for arm in ("nan", "hang", "stuck", "hog"):
        assert trials[arm].info.status == "FAILED", arm
    # own faults are not retried; a lost worker is, once (max_retries: 1)
    assert (
        "orchestrate.retries" not in trials["nan"].data.tags and "orchestrate.retries" not in trials["hog"].data.tags
    )
    assert trials["stuck"].data.tags["orchestrate.retries"] == "1"
    lost = trials["lost"]
    assert lost.info.status == "FINISHED" and lost.data.tags["orchestrate.retries"] == "1"
    assert "val_accuracy" in lost.data.metrics
    # every trial exactly once
    assert sum(1 for r in runs if r.data.tags.get("orchestrate.level") == "trial") == 5
    # the run could not finish: the hypothesis's run is closed FAILED with the reason, nothing is left open
    (hypothesis,) = [r for r in runs if r.data.tags.get("orchestrate.level") == "hypothesis"]
    assert hypothesis.info.status == "FAILED"
    assert hypothesis.data.tags["orchestrate.error"].startswith("AllTrialsFailedError: no verdict: arm ")
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
