"""What ``orchestrate run`` prints when standard error is not a terminal (a log file, a
cluster job, CI, ``| tee``), and where Ray's own lines go (execute/run_log.py).

Before: such a run printed nothing between its first line and the verdict table (8 silent
minutes for ``make run`` into a file), while Ray Tune's "Experiment state snapshotting has
been triggered multiple times..." reached the user 10 times, 3 lines each. Now: one line
per finished trial, per confirmation seed and per phase, and Ray's lines in a file under
the state folder, named in the first line (``--verbose``: on standard error, as before).

The real runs provoke Ray Tune's snapshot warning on purpose: with its threshold at
1000 s (``TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S``) every forced
snapshot after the first warns, and a run of the tiny hypothesis forces several.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import pytest

from helpers import TINY_HYPOTHESIS, new_mlflow_store
from orchestrator.execute.progress import ArmProgress, Progress
from orchestrator.execute.run_log import phase_line, ray_lines_to_file, ray_log_path, search_finished, trial_line
from orchestrator.results import RunKind, TrialRecord

ROOT = Path(__file__).resolve().parent.parent
TRIAL = re.compile(r"^orchestrate: \[(small|large)\] trial \d+ COMPLETED val_accuracy=[\d.]+ \(\d+ s\)$", re.M)
SEED = re.compile(r"^orchestrate: \[(small|large)\] confirm seed \d+ COMPLETED test_accuracy=[\d.]+ \(\d+ s\)$", re.M)
RAY_WARNING = re.compile(r"WARNING \S+\.py:\d+ --")  # Ray's driver format: "<time>\tWARNING file.py:209 -- ..."
SNAPSHOT_WARNING = "Experiment state snapshotting has been triggered multiple times"


# -- the lines, without Ray -----------------------------------------------------------------


def test_a_trial_line_names_arm_trial_status_objectives_and_its_duration():
    line = trial_line("lora", "trial 7", "COMPLETED", {"val_accuracy": 0.78125, "flops_ratio": 0.25}, 41.4)
    assert line == "orchestrate: [lora] trial 7 COMPLETED val_accuracy=0.7812 flops_ratio=0.25 (41 s)"


def test_a_failed_trial_line_gives_its_reason_on_one_shortened_line():
    reason = "RuntimeError: injected failure\n" + "x" * 500
    line = trial_line("flaky", "confirm seed 3", "FAILED", {}, 2.0, reason)
    assert line.startswith("orchestrate: [flaky] confirm seed 3 FAILED RuntimeError: injected failure x")
    assert "\n" not in line and len(line) < 250 and line.endswith(" (2 s)")


def test_a_phase_line_gives_the_seconds_since_the_run_started():
    assert phase_line("confirmation round 2: large on seeds 3, 4", 95.6) == (
        "orchestrate: confirmation round 2: large on seeds 3, 4 at 96 s"
    )


def test_a_finished_search_counts_its_trials_by_status():
    trials = [record("a", "COMPLETED"), record("b", "STOPPED"), record("c", "COMPLETED")]
    assert search_finished("small", trials) == "[small] search finished: 3 trials (2 COMPLETED, 1 STOPPED)"


def test_rays_log_is_named_after_hypothesis_profile_and_start_time():
    path = ray_log_path(Path("state"), "radlora-quarter-flops", "smoke", datetime(2026, 11, 30, 5, 4, 16))
    assert path == Path("state/logs/radlora-quarter-flops-smoke-20261130-050416.log")


def test_without_a_terminal_each_finished_trial_prints_its_line(capsys):
    with Progress() as progress:  # pytest captures stderr: not a terminal
        arm = progress.arm("small", "search", 2, "val_accuracy", "max", ("val_accuracy", "flops_ratio"))
        arm.running = 1
        arm.finished("trial 1", record("t1", "COMPLETED", val_accuracy=0.5, flops_ratio=0.25, epoch=1), 3.0)
        progress.phase("[small] search finished: 1 trials (1 COMPLETED)")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "orchestrate: [small] trial 1 COMPLETED val_accuracy=0.5 flops_ratio=0.25 (3 s)"
    assert re.fullmatch(r"orchestrate: \[small\] search finished: 1 trials \(1 COMPLETED\) at \d+ s", err[1])
    assert (arm.done, arm.running) == (1, 0)


def test_quiet_prints_no_trial_or_phase_line_but_still_counts(capsys):
    with Progress(quiet=True) as progress:
        arm = progress.arm("small", "search", 2, "val_accuracy", "max")
        arm.finished("trial 1", record("t1", "FAILED"), 3.0)
        progress.phase("judging: look 1, 2 claims")
        progress.warn("a damaged archive line")
    assert capsys.readouterr().err == "orchestrate: warning: a damaged archive line\n"
    assert (arm.done, arm.failed) == (1, 1)


def test_in_a_terminal_the_live_table_shows_instead_of_lines(monkeypatch):
    from rich.console import Console

    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    with Progress() as progress:
        arm = progress.arm("small", "search", 2, "val_accuracy", "max")
        assert progress._live is not None and not progress.prints_lines and arm.on_line is None


def test_the_recorder_numbers_trials_as_their_mlflow_runs_and_confirm_runs_by_seed(tmp_path):
    from orchestrator.execute.recorder import TrialRecorder
    from orchestrator.execute.state import RunState
    from orchestrator.tracking import Tracker
    from orchestrator.trial.trainable import SEED_KEY

    tracker = Tracker(new_mlflow_store(tmp_path))
    experiment = tracker.experiment_id("log-lines")
    parent = tracker.start_run(experiment, "small", {})
    state = RunState.open(tmp_path / "state", "h", "default", "sha", fresh=False)
    lines: list[str] = []
    for kind in (RunKind.TRIAL, RunKind.CONFIRM):
        progress = ArmProgress("small", str(kind), 2, "max", "val_accuracy", on_line=lines.append)
        recorder = TrialRecorder(tracker, experiment, parent, "small", kind, 1, [], state, progress, {}, ["lr"])
        for seed, trial_id in ((1001, "t1"), (1002, "t2")):
            recorder.started(trial_id, {SEED_KEY: seed} if kind == RunKind.CONFIRM else {"lr": 0.01})
            recorder.result(trial_id, {"epoch": 1, "val_accuracy": 0.625})
            recorder.completed(trial_id, None)
    assert [line.rsplit(" (", 1)[0] for line in lines] == [
        "orchestrate: [small] trial 1 COMPLETED val_accuracy=0.625",
        "orchestrate: [small] trial 2 COMPLETED val_accuracy=0.625",
        "orchestrate: [small] confirm seed 1001 COMPLETED val_accuracy=0.625",
        "orchestrate: [small] confirm seed 1002 COMPLETED val_accuracy=0.625",
    ]


def test_rays_records_go_to_the_file_and_its_handlers_come_back(tmp_path, capfd):
    ray_logger = logging.getLogger("ray")
    before = list(ray_logger.handlers)
    to_stderr = logging.StreamHandler(sys.stderr)
    ray_logger.addHandler(to_stderr)  # as Ray's own PlainRayHandler does
    try:
        with ray_lines_to_file(tmp_path / "logs" / "run.log"):
            logging.getLogger("ray.tune.execution.experiment_state").warning(SNAPSHOT_WARNING)
        assert ray_logger.handlers == [*before, to_stderr]
    finally:
        ray_logger.removeHandler(to_stderr)
    assert SNAPSHOT_WARNING in (tmp_path / "logs" / "run.log").read_text()
    assert SNAPSHOT_WARNING not in capfd.readouterr().err


def test_run_has_a_verbose_flag():
    from orchestrator.cli.main import build_parser

    assert build_parser().parse_args(["run", "h.yaml", "--verbose"]).verbose
    assert not build_parser().parse_args(["run", "h.yaml"]).verbose


def record(trial_id: str, status: str, **metrics: float) -> TrialRecord:
    error = "RuntimeError: boom" if status == "FAILED" else None
    return TrialRecord(trial_id, "small", RunKind.TRIAL, {}, status=status, metrics=metrics, error=error)


# -- real runs, stderr piped ------------------------------------------------------------------


class PipedRun(NamedTuple):
    """A real ``orchestrate run`` of the tiny hypothesis with stderr piped (not a terminal)."""

    exit_code: int
    stderr: str
    state_dir: Path


def piped_run(folder: Path, *flags: str) -> PipedRun:
    (folder / "tiny.yaml").write_text(TINY_HYPOTHESIS)
    uri = new_mlflow_store(folder)
    state_dir = folder / "state"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "1000",
    }  # provokes Ray Tune's warning
    env.pop("RAY_ADDRESS", None)
    command = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "run",
        str(folder / "tiny.yaml"),
        "--tracking-uri",
        uri,
        "--state-dir",
        str(state_dir),
        *flags,
    ]
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=1500)
    return PipedRun(done.returncode, done.stderr, state_dir)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> PipedRun:
    run = piped_run(tmp_path_factory.mktemp("log-default"))
    assert run.exit_code == 0, run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def quiet_verbose_run(tmp_path_factory) -> PipedRun:
    run = piped_run(tmp_path_factory.mktemp("log-quiet-verbose"), "--quiet", "--verbose")
    assert run.exit_code == 0, run.stderr[-3000:]
    return run


@pytest.mark.slow
@pytest.mark.e2e
def test_a_piped_run_prints_a_line_per_trial_and_per_confirmation_seed(default_run):
    trials, seeds = TRIAL.findall(default_run.stderr), SEED.findall(default_run.stderr)
    assert sorted(trials) == ["large", "large", "small", "small"], default_run.stderr  # 2 arms x 2 trials
    assert sorted(seeds) == ["large", "large", "small", "small"], default_run.stderr  # 2 arms x 2 seeds


@pytest.mark.slow
@pytest.mark.e2e
def test_a_piped_run_prints_a_line_per_phase_in_order(default_run):
    phases = [
        r"\[small\] search started: 2 trials",
        r"\[large\] search started: 2 trials",
        r"\[small\] search finished: 2 trials \(2 COMPLETED\)",
        r"\[large\] search finished: 2 trials \(2 COMPLETED\)",
        r"confirmation round 1: small, large on seeds \d+, \d+",
        r"judging: look 1, 2 claims",
    ]
    found = [re.search(rf"^orchestrate: {phase} at \d+ s$", default_run.stderr, re.M) for phase in phases]
    assert all(found), default_run.stderr
    starts = [match.start() for match in found if match]
    assert starts == sorted(starts), default_run.stderr


@pytest.mark.slow
@pytest.mark.e2e
def test_a_piped_run_keeps_rays_lines_in_the_log_file_named_in_its_first_line(default_run):
    err = default_run.stderr
    assert SNAPSHOT_WARNING not in err and not RAY_WARNING.search(err), err
    first = err.splitlines()[0]
    assert first.startswith("tiny-test [default] on local Ray"), err
    log_file = Path(first.rsplit("; Ray's log: ", 1)[1])
    assert log_file.parent == default_run.state_dir.resolve() / "logs"
    assert SNAPSHOT_WARNING in log_file.read_text()


@pytest.mark.slow
@pytest.mark.e2e
def test_quiet_prints_no_trial_or_phase_line(quiet_verbose_run):
    assert not re.search(r"^orchestrate: \[", quiet_verbose_run.stderr, re.M), quiet_verbose_run.stderr
    assert "confirmation round" not in quiet_verbose_run.stderr


@pytest.mark.slow
@pytest.mark.e2e
def test_verbose_lets_rays_lines_through_and_writes_no_log_file(quiet_verbose_run):
    assert SNAPSHOT_WARNING in quiet_verbose_run.stderr
    assert not (quiet_verbose_run.state_dir / "logs").exists()
