"""Interruptions, for real: kill the driver mid-search, run again, nothing lost or doubled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY_HYPOTHESIS

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def start(spec: Path, folder: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--quiet",
               "--state-dir", str(folder / "state"), "--tracking-uri", f"sqlite:///{folder}/mlflow.db"]
    return subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finished_records(folder: Path) -> int:
    path = folder / "state" / "state" / "tiny-test--default.json"
    if not path.exists():
        return 0
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return 0
    return sum(len(arm.get("records", {}).get("trial", {})) for arm in data.get("arms", {}).values())


def interrupt_after_first_trial(proc: subprocess.Popen, folder: Path, sig: int) -> None:
    deadline = time.monotonic() + 600
    while finished_records(folder) < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no trial finished in 10 minutes"
        time.sleep(0.5)
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    else:
        proc.send_signal(sig)
    proc.wait(timeout=300)


def runs_of(folder: Path):
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name("tiny-test")
    return client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "sigint"])
def test_interrupted_run_resumes_without_losing_or_doubling_trials(tmp_path, sig):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_HYPOTHESIS.replace("trials_per_arm: 2", "trials_per_arm: 3").replace("max_concurrent: 2", "max_concurrent: 1"))
    first = start(spec, tmp_path)
    interrupt_after_first_trial(first, tmp_path, sig)
    if sig == signal.SIGINT:
        assert first.returncode == 130
        assert "run the same command again to resume" in first.stderr.read()
    survived = finished_records(tmp_path)

    second = start(spec, tmp_path)
    out, err = second.communicate(timeout=900)
    assert second.returncode == 0, err[-3000:]
    assert "SUPPORTED" in out

    runs = runs_of(tmp_path)
    hypothesis = [r for r in runs if r.data.tags.get("orchestrate.level") == "hypothesis"]
    assert len(hypothesis) == 1 and hypothesis[0].info.status == "FINISHED"
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for arm in ("small", "large"):
        trials = [r for r in runs if r.data.tags.get("orchestrate.level") == "trial" and r.data.tags["orchestrate.arm"] == arm]
        ids = [r.data.tags["orchestrate.trial_id"] for r in trials]
        assert len(ids) == len(set(ids)), "a trial was logged twice"
        finished = [r for r in trials if r.info.status == "FINISHED"]
        assert len(finished) == 3, [(r.info.run_name, r.info.status) for r in trials]
        assert all(r.info.status in ("FINISHED", "KILLED") for r in trials)
        confirms = [r for r in runs if r.data.tags.get("orchestrate.level") == "confirm" and r.data.tags["orchestrate.arm"] == arm]
        assert sorted(r.data.params["seed"] for r in confirms if r.info.status == "FINISHED") == ["1000", "1001"]
    assert survived >= 1  # the interruption came after real progress, which was kept
