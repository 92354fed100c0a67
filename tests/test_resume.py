"""Interruptions, for real: one run stopped at four points in turn (SIGKILL during the
search, SIGTERM during the resumed search, SIGINT between search and confirmation,
SIGKILL during confirmation), run again after each; a SIGTERM or SIGINT is a clean stop
(exit 130, no MLflow run left RUNNING); at the end nothing is lost or doubled and the
verdicts equal those of a run that was never interrupted.

One run interrupted four times, not four runs interrupted once: each resume must pick up
what all the earlier ones left, which is the harder case, and it costs one run's trials
instead of four (every start of the driver and of Ray Tune's workers costs ~10-15 s of
imports on a small machine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from helpers import TINY_HYPOTHESIS, new_mlflow_store

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SPEC = TINY_HYPOTHESIS.replace("trials_per_arm: 2", "trials_per_arm: 3").replace(
    "max_concurrent: 2", "max_concurrent: 1"
)


def start(spec: Path, folder: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "run",
        str(spec),
        "--quiet",
        "--state-dir",
        str(folder / "state"),
        "--tracking-uri",
        f"sqlite:///{folder}/mlflow.db",
    ]
    # SIGINT as a terminal's foreground job has it: a suite run as a background job ignores
    # SIGINT, its children inherit that, and the driver (like Python) keeps it ignored
    return subprocess.Popen(
        command,
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def state_of(folder: Path) -> dict[str, Any]:
    path = folder / "state" / "state" / "tiny-test--default.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):  # not written yet
        return {}


def records(state: dict[str, Any], kind: str) -> int:
    return sum(len(arm.get("records", {}).get(kind, {})) for arm in state.get("arms", {}).values())


def searched(state: dict[str, Any]) -> bool:
    arms = state.get("arms", {})
    return len(arms) == 2 and all(arm.get("search_done") for arm in arms.values())


# Where the driver is stopped, in the order a run reaches them: a condition on its saved
# state now and when this driver started, polled. Each asks for progress made by the
# driver being stopped, so each stop interrupts work in flight, and one run passes all
# four in turn. (Every arm's search is one Tuner: the first arm's trials come first.)
POINTS: list[tuple[str, int, Callable[[dict[str, Any], dict[str, Any]], bool]]] = [
    ("during the search", signal.SIGKILL, lambda s, start: records(s, "trial") >= 1),
    ("during the resumed search", signal.SIGTERM, lambda s, start: records(s, "trial") >= records(start, "trial") + 1),
    # the search done; confirmation's Tuner is starting (its worker imports torch) or running
    ("between search and confirmation", signal.SIGINT, lambda s, start: searched(s)),
    ("during confirmation", signal.SIGKILL, lambda s, start: records(s, "confirm") >= records(start, "confirm") + 1),
]


def interrupt_at(
    proc: subprocess.Popen,
    folder: Path,
    sig: int,
    point: Callable[[dict[str, Any], dict[str, Any]], bool],
    start_state: dict[str, Any],
) -> dict[str, Any]:
    deadline = time.monotonic() + 600
    while not point(state := state_of(folder), start_state):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the kill point never came in 10 minutes"
        time.sleep(0.05)
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    else:
        proc.send_signal(sig)
    proc.wait(timeout=300)
    return state


def runs_of(folder: Path):
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name("tiny-test")
    return client.search_runs([experiment.experiment_id], max_results=1000)


def verdicts(runs) -> dict[str, str]:
    (parent,) = [r for r in runs if r.data.tags.get("orchestrate.level") == "hypothesis"]
    return {k: v for k, v in parent.data.tags.items() if k.startswith("verdict.")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("uninterrupted")
    (folder / "tiny.yaml").write_text(SPEC)
    new_mlflow_store(folder)
    proc = start(folder / "tiny.yaml", folder)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return verdicts(runs_of(folder))


def test_a_run_interrupted_four_times_resumes_without_losing_or_doubling_trials(tmp_path, uninterrupted):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    new_mlflow_store(tmp_path)
    kept: set[str] = set()  # MLflow runs of trials and confirmations finished before some kill
    for where, sig, point in POINTS:
        start_state = state_of(tmp_path)
        proc = start(spec, tmp_path)
        state = interrupt_at(proc, tmp_path, sig, point, start_state)
        if sig != signal.SIGKILL:  # a clean stop
            err = proc.stderr.read()
            assert proc.returncode == 130, f"{where}: exit {proc.returncode}\n{err[-3000:]}"
            assert "run the same command again to resume" in err, where
            assert not [r.info.run_name for r in runs_of(tmp_path) if r.info.status == "RUNNING"], where
        kept |= {
            run_id
            for arm in state.get("arms", {}).values()
            for kind in ("trial", "confirm")
            for run_id in arm.get(kind, {}).values()
        }

    last = start(spec, tmp_path)
    out, err = last.communicate(timeout=900)
    assert last.returncode == 0, err[-3000:]
    assert "SUPPORTED" in out

    runs = runs_of(tmp_path)
    hypothesis = [r for r in runs if r.data.tags.get("orchestrate.level") == "hypothesis"]
    assert len(hypothesis) == 1 and hypothesis[0].info.status == "FINISHED"
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for arm in ("small", "large"):
        trials = [
            r
            for r in runs
            if r.data.tags.get("orchestrate.level") == "trial" and r.data.tags["orchestrate.arm"] == arm
        ]
        ids = [r.data.tags["orchestrate.trial_id"] for r in trials]
        assert len(ids) == len(set(ids)), "a trial was logged twice"
        finished = [r for r in trials if r.info.status == "FINISHED"]
        assert len(finished) == 3, [(r.info.run_name, r.info.status) for r in trials]
        assert all(r.info.status in ("FINISHED", "KILLED") for r in trials)
        confirms = [
            r
            for r in runs
            if r.data.tags.get("orchestrate.level") == "confirm" and r.data.tags["orchestrate.arm"] == arm
        ]
        assert sorted(r.data.params["seed"] for r in confirms if r.info.status == "FINISHED") == ["1000", "1001"]
    # what finished before each kill was kept: its MLflow runs are the same ones
    assert kept and kept <= {r.info.run_id for r in runs}
    assert verdicts(runs) == uninterrupted
