"""No secret from the environment on disk, Ray's files included (execute/ray_session.py).

Before: with ``AWS_SECRET_ACCESS_KEY`` set, a run left its value 10 times in
``/tmp/ray/session_*/logs/runtime_env_agent.log`` (Ray Tune copies ``AWS_*`` into each
trial actor's ``runtime_env``, and Ray's agent logs it), under folders of mode 0777.
The end-to-end test runs a real driver with secrets set and greps every file it and its
Ray wrote; the unit tests pin each of the three measures.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest

from helpers import TINY_HYPOTHESIS, new_mlflow_store
from orchestrator.execute import ray_session

ROOT = Path(__file__).resolve().parent.parent

#: distinctive values; every one must be found nowhere on disk
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIA7Q2ZEXAMPLE93KD1",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-5d0c2b7e91f4a8",
    "AWS_SESSION_TOKEN": "aws-session-c41e09b7d2aa63",
    "HF_TOKEN": "hf_secret_8be2c1f07d3945",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-pw-2f9a61c0e8b7d4",
    "MLFLOW_TRACKING_TOKEN": "mlflow-tok-71d3e9a0c5b2f8",
}


def files_holding(folder: Path, values: list[str]) -> dict[str, list[str]]:
    """Each value found in some file under ``folder``: the files, by value."""
    found: dict[str, list[str]] = {}
    for path in folder.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        for value in values:
            if value.encode() in data:
                found.setdefault(value, []).append(str(path))
    return found


def session_folders(driver_pid: int) -> list[Path]:
    """Ray names a session folder after the driver's pid: ours (under a private folder)
    or Ray's default one (/tmp/ray)."""
    roots = {Path(tempfile.gettempdir()), Path("/tmp")}
    patterns = [f"orchestrate-ray-*/ray/session_*_{driver_pid}", f"ray/session_*_{driver_pid}"]
    return sorted({p for root in roots for pattern in patterns for p in root.glob(pattern)})


def private_to_owner(folder: Path) -> bool:
    """Some folder on the way from the temp folder down to ``folder`` lets only its
    owner (us) in: mode 0700."""
    for part in (folder, *folder.parents):
        info = part.stat()
        if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700:
            return True
        if part.parent in (Path("/tmp"), Path(tempfile.gettempdir())):
            return False
    return False


class SecretRun(NamedTuple):
    """A real ``orchestrate run`` with SECRETS set, in ``folder`` (spec, sqlite store and its
    artifacts, state, reports/), and the Ray session folders its driver left."""

    exit_code: int
    stderr: str
    folder: Path
    ray_sessions: list[Path]


@pytest.fixture(scope="module")
def run_with_secrets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-secrets")
    (folder / "tiny.yaml").write_text(TINY_HYPOTHESIS)
    uri = new_mlflow_store(folder)
    env = {
        **os.environ,
        **SECRETS,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        ray_session.KEEP_SESSION_FLAG: "1",
    }  # Ray's files stay, to be read here
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
        str(folder / "state"),
        "--quiet",
    ]
    driver = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = driver.communicate(timeout=1500)
    sessions = session_folders(driver.pid)
    yield SecretRun(driver.returncode, err, folder, sessions)
    for session in sessions:
        if session.parent.name == "ray" and session.parents[1].name.startswith("orchestrate-ray-"):
            shutil.rmtree(session.parents[1], ignore_errors=True)


@pytest.mark.slow
@pytest.mark.e2e
def test_a_run_with_secrets_set_writes_none_of_them_to_disk(run_with_secrets):
    run = run_with_secrets
    assert run.exit_code == 0, run.stderr[-3000:]
    sessions, folder = run.ray_sessions, run.folder
    assert len(sessions) == 1, sessions
    (session,) = sessions
    assert any(session.rglob("runtime_env_agent.log")), "Ray's logs are not where they were looked for"
    assert (folder / "reports").is_dir() and (folder / "state").is_dir() and (folder / "mlflow.db").is_file()
    # the run's folder holds the spec, the sqlite store, its artifacts, the state and reports/
    for where in (session, folder):
        assert files_holding(where, list(SECRETS.values())) == {}, where


@pytest.mark.slow
@pytest.mark.e2e
def test_rays_session_files_are_reachable_by_their_owner_only(run_with_secrets):
    run = run_with_secrets
    assert run.exit_code == 0, run.stderr[-3000:]
    sessions = run.ray_sessions
    assert sessions and all(private_to_owner(session) for session in sessions), sessions


def test_rays_processes_inherit_no_secret_but_the_ones_trials_need():
    environ = {
        **SECRETS,
        "MY_API_KEY": "apikey-93c1f0aa7b26",
        "HUGGING_FACE_HUB_TOKEN": "hf_secret_1234567890",
        "RAY_AUTH_TOKEN": "ray-token-0123456789",
        "TOKENIZERS_PARALLELISM": "false",
        "PATH": "/usr/bin",
    }
    assert ray_session.secret_variables(environ) == [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
        "MY_API_KEY",
    ]  # kept: the Hugging Face tokens (trials load hub models), Ray's own token, short values, the rest


def test_the_driver_gets_its_secrets_back_after_ray_started(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    with ray_session._environment_without_secrets():
        assert "AWS_SECRET_ACCESS_KEY" not in os.environ and "MLFLOW_TRACKING_PASSWORD" not in os.environ
        assert os.environ["HF_TOKEN"] == SECRETS["HF_TOKEN"]
    assert {name: os.environ[name] for name in SECRETS} == SECRETS


def test_tune_copies_no_aws_key_into_a_trials_runtime_env(monkeypatch):
    """Ray 2.60 copies AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and
    AWS_SECURITY_TOKEN (the e2e test above fails without this measure)."""
    from ray.tune.execution import class_cache

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)

    class Trainable:
        pass

    propagated = class_cache.ENV_VARS_TO_PROPAGATE  # Ray's, or ours if this session's Ray is up (conftest.shared_ray)
    with ray_session._without_tune_credential_copy():
        env_vars = class_cache._ActorClassCache().get(Trainable)._default_options["runtime_env"]["env_vars"]
        assert env_vars and not set(env_vars.values()) & set(SECRETS.values())
    assert class_cache.ENV_VARS_TO_PROPAGATE is propagated


def test_rays_private_folder_is_mode_0700_and_removed_afterwards(monkeypatch):
    monkeypatch.delenv(ray_session.KEEP_SESSION_FLAG, raising=False)
    with ray_session._private_folder() as folder:
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        assert len(folder) + ray_session._SOCKET_SUFFIX <= 107
        (Path(folder) / "ray").mkdir()
    assert not os.path.exists(folder)
    monkeypatch.setenv(ray_session.KEEP_SESSION_FLAG, "1")
    with ray_session._private_folder() as kept:
        pass
    assert os.path.isdir(kept)
    shutil.rmtree(kept)


def test_a_folder_whose_driver_was_killed_is_removed_by_the_next_start(monkeypatch):
    """SIGKILL leaves a driver no time to clean up; the next start does it for the dead."""
    monkeypatch.delenv(ray_session.KEEP_SESSION_FLAG, raising=False)
    with ray_session._private_folder() as first:
        root = Path(first).parent  # where this machine's private folders go
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    abandoned, running, kept = (
        root / f"{ray_session.PRIVATE_PREFIX}test-{name}-{os.getpid()}" for name in ("dead", "live", "kept")
    )
    for folder in (abandoned, running, kept):
        folder.mkdir()
    (abandoned / ray_session.OWNER_FILE).write_text(f"{socket.gethostname()} {driver.pid}")
    (running / ray_session.OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}")
    driver.kill()
    driver.wait()
    with ray_session._private_folder() as folder:
        assert Path(folder).parent == root
    assert not abandoned.exists()
    assert running.exists() and kept.exists()  # a live driver's, and one kept on purpose (no owner)
    for folder in (running, kept):
        shutil.rmtree(folder)


def test_a_long_temp_folder_falls_back_to_tmp_for_rays_socket_paths(monkeypatch, tmp_path):
    long_root = tmp_path / ("x" * 60)
    long_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_root))
    monkeypatch.delenv(ray_session.KEEP_SESSION_FLAG, raising=False)
    with ray_session._private_folder() as folder:
        assert Path(folder).parent == Path("/tmp")
