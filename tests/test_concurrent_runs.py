"""Two ``orchestrate run`` at the same time on the same sqlite MLflow store.

Both drivers start their own local Ray (each ``ray.init`` without an address starts a
separate instance: its own session folder and ports) and write to one ``mlflow.db``.
Both must finish with complete records: every run FINISHED, nothing lost to
"database is locked", and no crash while MLflow creates the tables of the new store
(two drivers doing that at once crashed before ``tracking._first_connection_lock``).
They share one ``--state-dir`` too: the run lock (``execute/run_lock.py``) is per
hypothesis and profile, so two hypotheses in one folder run side by side.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import TINY_HYPOTHESIS

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parent.parent
NAMES = ("concurrent-a", "concurrent-b")
# One arm is enough to race two drivers on one store (a second arm only adds a Tuner);
# the claims stay two, on that arm.
ONE_ARM = (
    TINY_HYPOTHESIS.replace("  large: {method: lora, fixed: {r: 8}}\n", "")
    .replace("  - small.flops_ratio <= large.flops_ratio / 2\n", "  - small.flops_ratio <= 0.5\n")
    .replace("  - small.test_accuracy >= large.test_accuracy - 0.5\n", "  - small.test_accuracy >= 0\n")
)
assert "large" not in ONE_ARM, "TINY_HYPOTHESIS changed: update ONE_ARM"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("concurrent")
    uri = f"sqlite:///{folder}/mlflow.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    processes = []
    for name in NAMES:
        spec = folder / f"{name}.yaml"
        spec.write_text(ONE_ARM.replace("name: tiny-test", f"name: {name}"))
        command = [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "run",
            str(spec),
            "--tracking-uri",
            uri,
            "--state-dir",
            str(folder / "state"),
            "--quiet",
        ]
        processes.append(
            subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    started = time.monotonic()
    results = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=1500)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
        results.append((process.returncode, out, err))
    return uri, results, time.monotonic() - started


def test_both_runs_exit_zero_without_lock_errors(two_runs):
    _, results, seconds = two_runs
    print(f"two concurrent runs took {seconds:.0f} s")
    for code, out, err in results:
        assert code == 0, err[-3000:]
        assert "database is locked" not in err and "Traceback" not in err, err[-3000:]
        assert "SUPPORTED" in out or "REFUTED" in out or "INCONCLUSIVE" in out


@pytest.mark.parametrize("name", NAMES)
def test_each_hypothesis_has_a_complete_record(two_runs, name):
    uri, _, _ = two_runs
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    levels = {}
    for run in runs:
        levels.setdefault(run.data.tags["orchestrate.level"], []).append(run)
    assert {k: len(v) for k, v in levels.items()} == {"hypothesis": 1, "arm": 1, "trial": 2, "confirm": 2}
    assert all(run.info.status == "FINISHED" for run in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert all("val_accuracy" in r.data.metrics for r in levels["trial"])
    assert all("test_accuracy" in r.data.metrics for r in levels["confirm"])
    (parent,) = levels["hypothesis"]
    assert parent.data.tags["orchestrate.hypothesis"] == name
    assert {"verdict.0", "verdict.1"} <= set(parent.data.tags)
    # no run of the other hypothesis leaked into this experiment
    assert all(r.data.tags.get("orchestrate.hypothesis", name) == name for r in runs)
