"""One trial without Ray: training, measurements, and trial faults."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from orchestrator.spec.models import TaskSpec, TrainingSpec
from orchestrator.tasks.prepare import prepare_task
from orchestrator.trial.faults import NonFiniteLossError
from orchestrator.trial.training import TrialSetup, run_trial


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    task = TaskSpec(
        model="random:bert-tiny",
        dataset="synthetic:polarity",
        max_length=32,
        train_examples=128,
        val_examples=48,
        test_examples=48,
    )
    return prepare_task(task, Path("."), tmp_path_factory.mktemp("cache"))


def setup(method="lora", fixed=None, **training) -> TrialSetup:
    return TrialSetup(
        arm="a",
        method=method,
        model="random:bert-tiny",
        metric="accuracy",
        training=TrainingSpec(epochs=2, batch_size=32, **training),
        fixed={"r": 8} if fixed is None else fixed,
    )


def test_a_trial_reports_every_epoch_and_the_final_measurements(data, tmp_path):
    reports = []
    final = run_trial(setup(), {"lr": 1e-2}, 0, data, lambda m, a: reports.append((m, a)), tmp_path)
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    assert reports[0][1] is None and reports[-1][1] is not None  # artifacts only with the last report
    assert final["flops_ratio"] == 1.0  # LoRA r=8 on the reference modules is the reference
    assert final["trainable_params"] == 4 * 8 * (32 + 32)
    assert final["head_params"] == 32 * 2 + 2
    for key in (
        "val_accuracy",
        "val_loss",
        "train_loss",
        "train_time_s",
        "peak_rss_mb",
        "adapter_flops_per_token",
        "total_rank",
    ):
        assert math.isfinite(final[key]), key


def test_confirmation_runs_report_the_held_out_split_as_test(data, tmp_path):
    confirm = TrialSetup(**{**setup().__dict__, "final_split": "test", "confirm": True})
    final = run_trial(confirm, {}, 1000, data, lambda m, a: None, tmp_path)
    assert "test_accuracy" in final and "test_loss" in final


def test_same_seed_same_result(data, tmp_path):
    a = run_trial(setup(), {}, 3, data, lambda m, x: None, tmp_path)
    b = run_trial(setup(), {}, 3, data, lambda m, x: None, tmp_path)
    assert a["val_loss"] == b["val_loss"]


def test_a_nan_loss_fails_the_trial_at_once_with_its_reason(data, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* at step 3"):
        run_trial(setup("failing", {"mode": "nan", "when": 3}), {}, 0, data, lambda m, a: None, tmp_path)


def test_full_fine_tuning_adds_no_adapter_flops(data, tmp_path):
    final = run_trial(setup("full", {}), {"lr": 1e-3}, 0, data, lambda m, a: None, tmp_path)
    assert final["flops_ratio"] == 0.0
    assert final["trainable_params"] > 100_000


def test_a_configuration_that_violates_an_analytic_constraint_is_never_trained(data, tmp_path):
    from orchestrator.spec.constraints import parse_constraint

    constrained = TrialSetup(**{**setup().__dict__, "constraints": (parse_constraint("trainable_params <= 1000"),)})
    reports = []
    final = run_trial(constrained, {}, 0, data, lambda m, a: reports.append(m), tmp_path)
    assert final["infeasible_before_training"] == 1.0
    assert final["trainable_params"] == 4 * 8 * 64  # r(d_in + d_out) over 4 modules
    assert "train_time_s" not in final and len(reports) == 1


def test_a_trial_past_its_time_budget_fails_with_that_reason(data, tmp_path):
    from orchestrator.trial.faults import TrialTimeoutError

    slow = TrialSetup(**{**setup().__dict__, "timeout_s": 1e-6})
    with pytest.raises(TrialTimeoutError, match=r"budget .* at step 1"):
        run_trial(slow, {}, 0, data, lambda m, a: None, tmp_path)


def test_a_trial_over_its_memory_limit_fails_with_that_reason(data, tmp_path):
    from orchestrator.trial.faults import MemoryLimitError

    hog = TrialSetup(
        **{**setup("failing", {"r": 2, "mode": "memory", "when": 1, "hog_mb": 64}).__dict__, "memory_limit_mb": 1}
    )
    with pytest.raises(MemoryLimitError, match=r"peaked at \d+ MB, over its 1 MB limit .* at step 1"):
        run_trial(hog, {}, 0, data, lambda m, a: None, tmp_path)


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="peak RSS is reset through Linux's /proc/self/clear_refs"
)
def test_a_trials_peak_memory_starts_from_what_the_process_holds_not_what_earlier_trials_freed():
    """Ray Tune runs each trial of a reused worker in a new thread; glibc keeps what a
    thread's arena freed. Without handing it back, every trial's peak started ~600 MB
    above the previous one's (measured on MiniLM, see ``reset_peak_memory``).

    The check runs in a fresh interpreter: inside the whole suite, the heap earlier tests
    left (their arenas, glibc's raised mmap threshold) decides how much a trim can return,
    and once only 62 of 320 MB came back (CI, 2026-11-30), although the function did its job."""
    import subprocess
    import sys

    script = """
import threading
from pathlib import Path
import torch
from orchestrator.measure.memory import peak_memory_mb, reset_peak_memory

def rss_mb():
    return next(int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmRSS:"))

def earlier_trial():
    tensors = [torch.ones(8192) for _ in range(10000)]  # 320 MB in 32 KiB blocks: heap, not mmap
    del tensors

before = rss_mb()
worker = threading.Thread(target=earlier_trial)
worker.start()
worker.join()
held = rss_mb()
reset_peak_memory("cpu")
print(before, held, peak_memory_mb("cpu"))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    before, held, peak = map(float, done.stdout.split())
    assert held > before + 150, (before, held)  # the earlier trial's memory was still held...
    # ...and no longer counts: measured here, the peak restarts 2-3 MB above ``before``
    # with the trim, 190-320 MB above it without (glibc trims only the arena's top itself).
    assert peak < before + 100, (before, held, peak)
