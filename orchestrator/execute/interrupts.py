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


def _handler(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
