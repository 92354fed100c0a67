"""One ``orchestrate run`` per hypothesis, profile and state folder (execute/run_lock.py).

Before the lock, two runs of one hypothesis in one folder both exited 0 on the same
hypothesis run, with every arm, trial and confirmation done twice. The unit tests hold
the lock in a second, real process (the kernel's lock is per open file, and dies with
its process); the end-to-end test starts two real drivers at once after a holder was
SIGKILLed, and counts what reached MLflow.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import TINY_HYPOTHESIS, new_mlflow_store
from orchestrator.errors import InputError, RunLockedError
from orchestrator.execute.run_lock import hold_run_lock, lock_path

ROOT = Path(__file__).resolve().parent.parent

HOLDER = textwrap.dedent("""\
    import sys
    from pathlib import Path
    from orchestrator.execute.run_lock import hold_run_lock

    with hold_run_lock(Path(sys.argv[1]), sys.argv[2], sys.argv[3]):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes our stdin, or kills us
""")


def start_holder(state_dir: Path, hypothesis: str = "tiny-test", profile: str = "default") -> subprocess.Popen:
    """A process that holds the lock once it has printed "held"."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state_dir), hypothesis, profile],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_holder_is_refused_with_who_holds_it_and_what_to_do(tmp_path):
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(RunLockedError) as refused, hold_run_lock(tmp_path, "tiny-test", "default"):
            pass
    finally:
        holder.kill()
        holder.wait()
    message = str(refused.value)
    assert "\n" not in message
    for part in (
        "'tiny-test'",
        "'default'",
        f"pid {holder.pid}",
        socket.gethostname(),
        str(lock_path(tmp_path, "tiny-test", "default")),
        "wait for it to finish or stop it",
    ):
        assert part in message, message


def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    holder = start_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert "pid" in lock_path(tmp_path, "tiny-test", "default").read_text()  # its record is still there
    with hold_run_lock(tmp_path, "tiny-test", "default") as path:
        assert f'"pid": {os.getpid()}' in path.read_text()


def test_a_finished_holder_releases_it(tmp_path):
    holder = start_holder(tmp_path)
    holder.communicate("")  # stdin closed: the holder leaves its block and exits
    with hold_run_lock(tmp_path, "tiny-test", "default"):
        pass
    assert lock_path(tmp_path, "tiny-test", "default").read_text() == ""  # released: no holder named


def test_other_hypotheses_and_profiles_in_the_folder_are_not_blocked(tmp_path):
    holder = start_holder(tmp_path, "tiny-test", "default")
    try:
        with hold_run_lock(tmp_path, "tiny-test", "smoke"), hold_run_lock(tmp_path, "other", "default"):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_profile_name_cannot_leave_the_locks_folder(tmp_path):
    assert lock_path(tmp_path, "h", "../../x").parent == tmp_path / "locks"


def test_a_state_dir_that_is_a_file_is_bad_input(tmp_path):
    (tmp_path / "state").write_text("not a folder")
    with (
        pytest.raises(InputError, match="is not a folder") as refused,
        hold_run_lock(tmp_path / "state", "tiny-test", "default"),
    ):
        pass
    assert not isinstance(refused.value, RunLockedError)


# -- two real drivers of one hypothesis in one folder -----------------------------------


@pytest.mark.slow
@pytest.mark.e2e
def test_two_runs_at_once_do_every_trial_once_even_after_a_holder_was_killed(tmp_path):
    """The planned runs and no more: 1 hypothesis, 2 arms, 2 x 2 trials, 2 x 2 confirmations."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_HYPOTHESIS)
    uri = new_mlflow_store(tmp_path)
    state_dir = tmp_path / "state"
    stale = start_holder(state_dir)
    stale.send_signal(signal.SIGKILL)
    stale.wait()

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    command = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "run",
        str(spec),
        "--tracking-uri",
        uri,
        "--state-dir",
        str(state_dir),
        "--quiet",
    ]
    drivers = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        while all(d.poll() is None for d in drivers):
            time.sleep(0.2)
        (refused,) = [d for d in drivers if d.poll() is not None]
        (winner,) = [d for d in drivers if d is not refused]
        assert winner.poll() is None, "the second run must refuse while the first is running"
        _, err = refused.communicate()
        _out, winner_err = winner.communicate(timeout=1500)
    finally:
        for d in drivers:
            d.kill()
    assert refused.returncode == 2, err[-3000:]
    assert err.startswith("orchestrate: hypothesis 'tiny-test' (profile 'default') is already running"), err[-3000:]
    assert f"pid {winner.pid}" in err and "Traceback" not in err and err.count("\n") == 1, err
    assert winner.returncode == 0, winner_err[-3000:]

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny-test").experiment_id], max_results=1000)
    levels: dict[str, int] = {}
    for run in runs:
        levels[run.data.tags["orchestrate.level"]] = levels.get(run.data.tags["orchestrate.level"], 0) + 1
    assert levels == {"hypothesis": 1, "arm": 2, "trial": 4, "confirm": 4}
    assert all(run.info.status == "FINISHED" for run in runs), [(r.info.run_name, r.info.status) for r in runs]
