"""Stop requests (Ctrl-C, SIGTERM) that reach the driver's clean stop.

The clean stop is a ``KeyboardInterrupt`` reaching ``run_plan``: it closes the open MLflow
runs as KILLED, keeps the run state, and the CLI exits 130 saying how to resume.
``ray.init`` installs Ray's own SIGTERM handler in the driver (it logs "SIGTERM
received" and the process dies on the spot), replacing any handler set before: a
scheduler's or ``kill``'s SIGTERM left the runs RUNNING until the next resume closed
them. So the handlers are installed for the run and again once Ray is up.

A signal ignored when the driver starts stays ignored, as Python itself does for SIGINT
(a job a non-interactive shell starts in the background ignores SIGINT, so that a Ctrl-C
meant for the foreground job does not stop it).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_ignored: set[int] = set()
#: Depth of ``deferred_stop`` blocks on the main thread, and a stop requested inside one.
_deferring = 0
_requested = False


@contextlib.contextmanager
def catching_stop_requests() -> Iterator[None]:
    """For the whole run: SIGINT and SIGTERM raise ``KeyboardInterrupt``; the handlers in
    place before come back afterwards. Call ``install`` again once Ray is up (it
    replaces the SIGTERM handler)."""
    main = threading.current_thread() is threading.main_thread()  # signals only reach the main thread
    previous = {signum: signal.getsignal(signum) for signum in _SIGNALS} if main else {}
    _ignored.update(signum for signum, handler in previous.items() if handler == signal.SIG_IGN)
    install()
    try:
        yield
    finally:
        _ignored.clear()
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def install() -> None:
    """Our handler for SIGINT and SIGTERM (from the main thread; elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_IGN if signum in _ignored else _handler)


@contextlib.contextmanager
def deferred_stop() -> Iterator[None]:
    """A stop request that arrives inside the block is raised when the block ends.

    For writes to the tracking store: a ``KeyboardInterrupt`` raised in the middle of an
    MLflow write could leave its sqlite transaction, and the file's write lock, held by a
    connection nobody uses again; the clean stop's own writes (closing the runs as KILLED)
    then waited on that lock until they gave up, and the runs stayed RUNNING (seen once
    in ``tests/test_resume.py`` on a loaded machine). A write lasts milliseconds, so the
    stop waits that long. Only the main thread's blocks defer: signals reach only it."""
    global _deferring, _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if _deferring == 0 and _requested:
            _requested = False
            raise KeyboardInterrupt


def _handler(signum: int, frame: Any) -> None:
    global _requested
    if _deferring:
        _requested = True
        return
    raise KeyboardInterrupt
