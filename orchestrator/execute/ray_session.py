"""Start (or join) Ray, quietly, with local listeners on 127.0.0.1 only.

Call ``prepare_ray_environment`` before anything imports ``ray``: Ray reads
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when it is imported, and without it a local
Ray listens on every interface with the machine's address (measured here with
``ss -ltn``: ``*:port`` and 192.0.2.x; with it, every listener is on 127.0.0.1).
That mode refuses extra nodes, which is what a local run wants.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

LOOPBACK_FLAG = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def prepare_ray_environment(address: str | None = None) -> None:
    """Quiet defaults, and loopback-only listeners for local runs. Idempotent."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/JSON/TensorBoard files per trial
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")
    # Ctrl-C must reach our driver as KeyboardInterrupt (it closes MLflow runs and keeps
    # the run state); Tune's own handler would return a partial result as if finished.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    if not (address or os.environ.get("RAY_ADDRESS")) and sys.platform.startswith("linux"):
        os.environ[LOOPBACK_FLAG] = "0"


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[str]:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local,
    loopback-only instance; shut down only what we started. Yields a description."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if "ray" not in sys.modules:
        prepare_ray_environment(address)
    import ray

    if ray.is_initialized():
        yield "existing Ray session"
        return
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
        where = f"Ray cluster at {address}"
    else:
        if sys.platform.startswith("linux") and os.environ.get(LOOPBACK_FLAG) != "0":
            raise RuntimeError(
                f"refusing to start a local Ray that would listen on every interface: set {LOOPBACK_FLAG}=0 "
                "(orchestrator.execute.ray_session.prepare_ray_environment) before ray is imported"
            )
        ray.init(
            address="local",  # a new instance; never join a `ray start` cluster found on this machine
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=True,
            _node_ip_address="127.0.0.1",
        )
        where = "local Ray (127.0.0.1)"
    try:
        yield where
    finally:
        ray.shutdown()
