"""``orchestrate ui``: the MLflow UI for the tool's store, on 127.0.0.1 only.

Starts ``mlflow server`` as a child process bound to the loopback interface, waits
until it answers ``/health``, prints the URL of the hypothesis's experiment (its
runs table: hypothesis -> arm -> trial | confirm, expandable) and runs until Ctrl-C
(or until the server exits). Nothing is written to the store:
an unknown hypothesis is reported, never created.

A tracking URI that is already a server (``http(s)://``) needs no second server:
the command prints that server's experiment URL and exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.cli.main import print_error

if TYPE_CHECKING:
    from orchestrator.tracking import Tracker

HOST = "127.0.0.1"
DEFAULT_PORT = 5000
MAX_PORT = 65535
START_TIMEOUT_S = 180.0  # a cold ``mlflow server`` import takes ~10-60 s on a busy 2-core machine


def add_ui_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ui`` to the ``orchestrate`` sub-commands."""
    p = subparsers.add_parser("ui", help="open the MLflow UI for the tool's store (127.0.0.1 only; Ctrl-C stops it)")
    _add_arguments(p)
    p.set_defaults(func=cmd_ui)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    p.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--hypothesis", help="hypothesis name (or its YAML file) whose experiment URL to print")
    p.add_argument(
        "--start-timeout", type=float, default=START_TIMEOUT_S, help="seconds to wait for the server to answer"
    )


def cmd_ui(args: argparse.Namespace) -> int:
    from orchestrator.tracking import Tracker, tracking_uri

    uri = tracking_uri(args.tracking_uri)
    if not 0 <= args.port <= MAX_PORT:
        print_error(f"orchestrate ui: --port {args.port} is not a port: pass 1-{MAX_PORT}, or 0 for any free one")
        return 2
    try:
        name = _hypothesis_name(args.hypothesis)
    except Exception as exc:  # an unreadable YAML: say so, nothing started
        print_error(f"orchestrate ui: {exc}")
        return 2
    if uri.startswith(("http://", "https://")):
        experiment = _experiment_id(Tracker(uri), name) if name else None
        print(experiment_url(uri.rstrip("/"), experiment), flush=True)
        return 0
    if uri.startswith("sqlite:///") and not _sqlite_path(uri).exists():
        print_error(
            f"orchestrate ui: no MLflow store at {_sqlite_path(uri)}"
            " (run `orchestrate run` first, or pass --tracking-uri)"
        )
        return 1
    # a server on a store it cannot read only answers with tracebacks: open it first, as
    # `run` does; a damaged one is a StoreError, exit 2 with one line (cli.main)
    tracker = Tracker(uri)
    experiment = _experiment_id(tracker, name) if name else None
    if name and experiment is None:
        print_error(f"orchestrate ui: no experiment named {name!r} in {uri}; showing every experiment")

    port = args.port or free_port()
    if not _port_free(port):
        print_error(f"orchestrate ui: port {port} on {HOST} is in use; pass --port (0 picks a free one)")
        return 1
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server too, not only Ctrl-C
    server = start_server(uri, port)
    base = f"http://{HOST}:{port}"
    try:
        if not wait_until_up(base, server, args.start_timeout):
            if server.poll() is not None:
                print_error(
                    f"orchestrate ui: the MLflow server exited with code {server.returncode}"
                    " before answering (its messages are above)"
                )
            else:
                print_error(
                    f"orchestrate ui: the MLflow server did not answer on {base} within {args.start_timeout:g} s"
                )
            return 1
        print(f"MLflow UI for {uri}: {experiment_url(base, experiment)}", flush=True)
        print("Ctrl-C to stop.", flush=True)
        code = server.wait()
        print_error(f"orchestrate ui: the MLflow server exited with code {code}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_server(server)
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def experiment_url(base: str, experiment_id: str | None) -> str:
    """The experiment's runs table. MLflow 3.17 opens an experiment in its "GenAI"
    view (trace dashboards, no runs) unless ``workflowType=machine_learning`` is in
    the URL (then remembered by the browser); ``/runs`` is the runs table."""
    if not experiment_id:
        return f"{base}/#/experiments"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def server_command(uri: str, port: int) -> list[str]:
    """``mlflow server`` on the loopback interface, one worker, default security
    middleware (Host header and CORS limited to localhost)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--uvicorn-opts",
        "--log-level warning",  # no access log line per request in the terminal
    ]


def start_server(uri: str, port: int) -> subprocess.Popen:
    env = dict(os.environ)
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "PYTHONUNBUFFERED": "1"})
    # its own session: Ctrl-C in the terminal reaches us, and we stop the server's whole group
    return subprocess.Popen(server_command(uri, port), env=env, start_new_session=True)


def wait_until_up(base: str, server: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def stop_server(server: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM to the server's process group (uvicorn and its worker), then SIGKILL."""
    if server.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def _hypothesis_name(value: str | None) -> str | None:
    """A name as given, or the ``name:`` of a hypothesis YAML file."""
    if not value:
        return None
    if value.endswith((".yaml", ".yml")) or Path(value).is_file():
        from orchestrator.spec.loader import load_hypothesis

        return load_hypothesis(value, None, check_requirements=False).hypothesis.name
    return value


def _experiment_id(tracker: Tracker, name: str) -> str | None:
    try:
        experiment = tracker.experiment_by_name(name)
    except Exception as exc:  # a server that does not answer: the URL of every experiment
        print_error(f"orchestrate ui: could not read {tracker.uri}: {exc}")
        return None
    return experiment.experiment_id if experiment is not None else None


def _sqlite_path(uri: str) -> Path:
    return Path(uri[len("sqlite:///") :].split("?", 1)[0])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="orchestrate ui", description="the MLflow UI for the tool's store, on 127.0.0.1"
    )
    _add_arguments(parser)
    return cmd_ui(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
