"""Start (or join) Ray, quietly, with local listeners on 127.0.0.1 only, its files in a
private folder, and no credential in its processes that the trials do not need.

Call ``prepare_ray_environment`` before anything imports ``ray``: Ray reads
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when it is imported, and without it a local
Ray listens on every interface with the machine's address (measured here with
``ss -ltn``: ``*:port`` and 192.0.2.x; with it, every listener is on 127.0.0.1).
That mode refuses extra nodes, which is what a local run wants.

A local Ray we start keeps no secret on disk (measured before: with
``AWS_SECRET_ACCESS_KEY`` set, its value 10 times in
``/tmp/ray/session_*/logs/runtime_env_agent.log``, under folders of mode 0777):

- its session files (logs, sockets, spilled objects) go to a folder of our own, mode
  0700, removed after shutdown (``ORCHESTRATE_KEEP_RAY_SESSION=1`` keeps it, for
  reading Ray's logs);
- its processes (GCS, raylet, and the workers they start) inherit the driver's
  environment without secret-looking variables (``tracking.looks_secret``), except
  the Hugging Face token: trials download hub weights themselves, and gated models
  need it. The driver keeps its own environment (its MLflow calls need
  ``MLFLOW_TRACKING_*``; trials never talk to MLflow);
- Ray Tune copies ``AWS_*`` keys from the driver's environment into every trial
  actor's ``runtime_env`` (``ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE``, for
  checkpoints on S3), and Ray's runtime-env agent logs that ``runtime_env`` in full:
  that copy is switched off for the session.

A cluster (``--address``) owns its processes and files: nothing of that changes there.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from orchestrator.execute.run_log import ray_lines_to_file
from orchestrator.tracking import looks_secret

LOOPBACK_FLAG = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
KEEP_SESSION_FLAG = "ORCHESTRATE_KEEP_RAY_SESSION"
PRIVATE_PREFIX = "orchestrate-ray-"
#: "HOST PID" of the driver using a private folder (see ``_private_folder``).
OWNER_FILE = "driver"
#: Secret-looking variables that trial processes need: they load hub models themselves.
TRIAL_CREDENTIALS = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"})
#: Bytes a Unix socket path of Ray's takes below our private folder, with room to spare:
#: ``/ray/session_2026-11-29_10-11-12_123456_1234567/sockets/plasma_store`` (68); the
#: kernel allows 107 in all (103 on macOS).
_SOCKET_SUFFIX = 72


def prepare_ray_environment(address: str | None = None) -> None:
    """Quiet defaults, and loopback-only listeners for local runs. Idempotent."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/JSON/TensorBoard files per trial
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # TUNE_MAX_PENDING_TRIALS_PG is left to Ray ("auto"): with max_concurrent_trials set, as
    # every Tuner here sets it, Tune then stages that many placement groups at once. Fixed
    # at 1 (as it was until 2026-11-30), trials started one after another at ~0.4 a second,
    # so 32 slots never held more than 4 running trials (benchmarks/scale.py, docs/scale.md).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")
    # Ctrl-C must reach our driver as KeyboardInterrupt (it closes MLflow runs and keeps
    # the run state); Tune's own handler would return a partial result as if finished.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    if not (address or os.environ.get("RAY_ADDRESS")) and sys.platform.startswith("linux"):
        os.environ[LOOPBACK_FLAG] = "0"


@contextlib.contextmanager
def ray_session(
    address: str | None = None, num_cpus: int | None = None, log_file: Path | None = None
) -> Iterator[str]:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local,
    loopback-only, private instance; shut down only what we started. Yields a description.

    With ``log_file``, the driver's Ray lines (its ``ray`` loggers, warnings and info)
    go to that file for the session instead of standard error (``run_log``); without
    it, Ray's warnings reach standard error as Ray prints them."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if "ray" not in sys.modules:
        prepare_ray_environment(address)
    import ray  # first: the import installs Ray's handler, which ray_lines_to_file sets aside

    lines = ray_lines_to_file(log_file) if log_file else contextlib.nullcontext()
    with lines:
        if ray.is_initialized():
            yield "existing Ray session"
            return
        with _started(address, num_cpus, logging.INFO if log_file else logging.WARNING) as where:
            yield where


@contextlib.contextmanager
def _started(address: str | None, num_cpus: int | None, logging_level: int) -> Iterator[str]:
    """``ray.init`` (the cluster at ``address``, else a local private instance; the
    driver's ``ray`` logger at ``logging_level``) and ``ray.shutdown`` after the block."""
    import ray

    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging_level, configure_logging=True)
        try:
            yield f"Ray cluster at {address}"
        finally:
            ray.shutdown()
        return
    if sys.platform.startswith("linux") and os.environ.get(LOOPBACK_FLAG) != "0":
        raise RuntimeError(
            f"refusing to start a local Ray that would listen on every interface: set {LOOPBACK_FLAG}=0 "
            "(orchestrator.execute.ray_session.prepare_ray_environment) before ray is imported"
        )
    with _private_folder() as folder, _without_tune_credential_copy():
        with _environment_without_secrets():  # what Ray's processes inherit; the driver's comes back after
            # Ray makes its temp folder mode 0777: a folder inside ours, which stays 0700
            ray.init(
                address="local",  # a new instance; never join a `ray start` cluster found on this machine
                num_cpus=num_cpus or os.cpu_count(),
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging_level,
                configure_logging=True,
                _node_ip_address="127.0.0.1",
                _temp_dir=os.path.join(folder, "ray"),
            )
        kept = f"; its files kept in {folder}" if os.environ.get(KEEP_SESSION_FLAG) == "1" else ""
        try:
            yield f"local Ray (127.0.0.1{kept})"
        finally:
            ray.shutdown()


def secret_variables(environ: Mapping[str, str]) -> list[str]:
    """Names of ``environ``'s variables that a local Ray's processes must not inherit:
    secret-looking by ``tracking``'s rule (name and length), except Ray's own settings
    (``RAY_AUTH_TOKEN``: a token-authenticated Ray needs it) and ``TRIAL_CREDENTIALS``."""
    return sorted(
        name
        for name, value in environ.items()
        if looks_secret(name, value) and not name.startswith("RAY_") and name not in TRIAL_CREDENTIALS
    )


@contextlib.contextmanager
def _environment_without_secrets() -> Iterator[None]:
    """``os.environ`` without ``secret_variables`` for the block (Ray starts its processes
    with a copy of it), then as it was."""
    removed = {name: os.environ.pop(name) for name in secret_variables(os.environ)}
    try:
        yield
    finally:
        os.environ.update(removed)


@contextlib.contextmanager
def _without_tune_credential_copy() -> Iterator[None]:
    """Ray Tune's list of driver variables copied into each trial actor's ``runtime_env``
    without the secret-looking ones (the ``AWS_*`` keys), for the block."""
    from ray.tune.execution import class_cache

    propagated = class_cache.ENV_VARS_TO_PROPAGATE
    class_cache.ENV_VARS_TO_PROPAGATE = {name for name in propagated if not looks_secret(name)}
    try:
        yield
    finally:
        class_cache.ENV_VARS_TO_PROPAGATE = propagated


@contextlib.contextmanager
def _private_folder() -> Iterator[str]:
    """A new folder of mode 0700 for Ray's session files, removed afterwards unless
    ``ORCHESTRATE_KEEP_RAY_SESSION=1``. Under the temp folder (``TMPDIR``) when its path
    leaves room for Ray's socket paths, else under /tmp (a state folder would often not:
    pytest's are 60-90 bytes).

    A driver killed with SIGKILL cannot remove its folder: the folder names its driver
    in ``OWNER_FILE`` while the run lasts, and the next start removes those whose driver
    is gone (``_remove_abandoned``). A folder kept on purpose has no owner file."""
    root = tempfile.gettempdir()
    if len(os.path.join(root, "orchestrate-ray-12345678")) + _SOCKET_SUFFIX > (
        103 if sys.platform == "darwin" else 107
    ):
        root = "/tmp"
    if os.name == "posix":  # elsewhere os.kill(pid, 0) is no probe (Windows: it stops the process)
        _remove_abandoned(root)
    folder = tempfile.mkdtemp(prefix=PRIVATE_PREFIX, dir=root)
    owner = os.path.join(folder, OWNER_FILE)
    with open(owner, "w", encoding="utf-8") as handle:
        handle.write(f"{socket.gethostname()} {os.getpid()}")
    try:
        yield folder
    finally:
        if os.environ.get(KEEP_SESSION_FLAG) != "1":
            shutil.rmtree(folder, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(owner)


def _remove_abandoned(root: str) -> None:
    """Remove our private folders under ``root`` whose driver, on this host, has ended
    (another user's folders are not ours to read: mode 0700 keeps us out anyway)."""
    host = socket.gethostname()
    for folder in glob.glob(os.path.join(root, PRIVATE_PREFIX + "*")):
        try:
            with open(os.path.join(folder, OWNER_FILE), encoding="utf-8") as handle:
                owner_host, pid = handle.read().split()
        except (OSError, ValueError):
            continue  # kept on purpose, being created, or not ours
        if owner_host == host and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
