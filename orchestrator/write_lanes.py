"""Tracking-store writes off the caller's thread, in order per run.

Why: with a tracking server every MLflow write is an HTTP round trip, and the recorder
makes them from Ray Tune's event loop, which schedules nothing while it waits. Against
the PostgreSQL-backed ``mlflow server`` one write cost 60-940 ms (docs/scale.md): at 32
concurrent trials the driver spent 95% of its time waiting on the server. ``WriteLanes``
runs the writes on a few threads instead; the caller only queues them.

Order: a run's writes go to one lane (chosen from the run id), and a lane is one thread,
so they reach the store in the order they were made (a trial's metrics before its end,
``FINISHED`` after its tags). Runs on different lanes are written in parallel.

Backlog: at most ``max_queued`` writes wait per lane; a caller that makes them faster than
the store takes them waits for a free place. A server slower than the search then slows the
search, as synchronous writes did, instead of holding an ever longer queue that the end of
the run (or a read) must wait for.

Failures: a failed write is kept and raised on the caller's thread by the next ``submit``
or by ``flush``, as the synchronous write would have raised it, one event later.

Hand-written because MLflow's own asynchronous logging (``MlflowClient.log_batch(...,
synchronous=False)``) covers metrics, params and tags only: ending a run (a trial's slowest
request, 124-940 ms measured) and texts would still wait on Tune's loop, and ending a run
first waits for that run's queued batches.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

_log = logging.getLogger(__name__)


class WriteLanes:
    """``lanes`` single-thread queues; ``submit(key, write)`` queues ``write`` on ``key``'s lane."""

    def __init__(self, lanes: int, name: str = "store-writes", max_queued: int = 64) -> None:
        if lanes < 1 or max_queued < 1:
            raise ValueError(f"lanes and max_queued must be at least 1, not {lanes} and {max_queued}")
        self._executors = [ThreadPoolExecutor(1, thread_name_prefix=f"{name}-{i}") for i in range(lanes)]
        self._places = [threading.BoundedSemaphore(max_queued) for _ in range(lanes)]
        self._last: list[Future[None] | None] = [None] * lanes  # a lane's last write: done means all are
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self.submitted = 0

    def submit(self, key: str, write: Callable[[], object]) -> None:
        """Queue ``write`` behind every write queued with the same ``key``; raises the
        error of an earlier write that failed."""
        self.raise_failure()
        lane = zlib.crc32(key.encode()) % len(self._executors)
        self._places[lane].acquire()  # waits while the lane's backlog is full
        self._last[lane] = self._executors[lane].submit(self._run, write, self._places[lane])
        self.submitted += 1

    def _run(self, write: Callable[[], object], place: threading.BoundedSemaphore) -> None:
        try:
            write()
        except BaseException as exc:  # kept for the caller's thread; this thread goes on
            with self._lock:
                if self._error is None:
                    self._error = exc
                else:
                    _log.warning("another queued store write failed: %s", exc)
        finally:
            place.release()

    def raise_failure(self) -> None:
        """The first failed write's error, raised once (then forgotten)."""
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def flush(self) -> None:
        """Wait until every queued write has been made; raise the first that failed."""
        wait([future for future in self._last if future is not None])
        self.raise_failure()

    def close(self, raise_failure: bool = True) -> None:
        """Flush and stop the threads. With ``raise_failure=False`` (an exception is already
        on its way) a failed write is logged rather than raised."""
        try:
            wait([future for future in self._last if future is not None])
        finally:
            for executor in self._executors:
                executor.shutdown(wait=True)
        if raise_failure:
            self.raise_failure()
        elif self._error is not None:
            _log.warning("a queued store write failed while the run was stopping: %s", self._error)
