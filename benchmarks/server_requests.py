"""What one request to a group's tracking server costs, with and without its credential cache.

    python benchmarks/server_requests.py                 # 30 requests of each kind, cache off then on
    python benchmarks/server_requests.py --requests 100 --ttl 0,300

Starts the PostgreSQL-backed ``mlflow server --app-name basic-auth`` of
tests/test_tracking_server.py (through ``scale.postgres_tracking_server``: a throwaway
PostgreSQL and server on 127.0.0.1, one user) once per ``--ttl`` value, and times the
requests a trial makes one at a time: ``create_run``, ``log_batch``, ``get_run`` and
``set_terminated`` (whose "View run" read-back ``Tracker`` turns off, as here). Prints the
p50 / p95 in ms. docs/scale.md (fix 5) holds the numbers of 2026-11-30.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import postgres_tracking_server  # the benchmark's own folder

CALLS = ("create_run", "log_batch", "get_run", "set_terminated")


def time_requests(uri: str, requests: int) -> dict[str, list[float]]:
    """Seconds per request of each kind, one trial's worth at a time."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # as Tracker does
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(f"requests-{time.time_ns()}")
    seconds: dict[str, list[float]] = {call: [] for call in CALLS}

    def timed(call: str, request: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = request(*args, **kwargs)
        seconds[call].append(time.perf_counter() - started)
        return result

    metrics, params, tags = [Metric("val_accuracy", 0.5, 0, 1)], [Param("lr", "0.001")], [RunTag("status", "ok")]
    for number in range(requests):
        run_id = timed("create_run", client.create_run, experiment, run_name=f"trial {number}").info.run_id
        timed("log_batch", client.log_batch, run_id, metrics=metrics, params=params, tags=tags)
        timed("get_run", client.get_run, run_id)
        timed("set_terminated", client.set_terminated, run_id)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30, help="requests of each kind per server")
    parser.add_argument("--ttl", default="0,600", help="auth_cache_ttl_seconds values, one server each")
    args = parser.parse_args()
    print("| auth_cache_ttl_seconds | " + " | ".join(f"{call} p50 / p95 ms" for call in CALLS) + " |")
    print("|---|" + "---|" * len(CALLS))
    for ttl in (int(value) for value in args.ttl.split(",")):
        with postgres_tracking_server(ttl) as uri:
            seconds = time_requests(uri, args.requests)
        cells = []
        for call in CALLS:
            values = sorted(seconds[call])
            p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
            cells.append(f"{statistics.median(values) * 1e3:.0f} / {p95 * 1e3:.0f}")
        print(f"| {ttl} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
