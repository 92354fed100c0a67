"""Stop requests (Ctrl-C, SIGTERM) that reach the driver's clean stop every time.

The clean stop is a ``KeyboardInterrupt`` reaching ``run_plan``: it closes the open MLflow
runs as KILLED, keeps the run state, and the CLI exits 130 saying how to resume. Two
things kept a stop request from getting there (both seen here):

- ``ray.init`` installs Ray's own SIGTERM handler in the driver (it logs "SIGTERM
  received" and the process dies on the spot), replacing ours: a scheduler's or
  ``kill``'s SIGTERM left the runs RUNNING until the next resume closed them. So the
  handlers are installed again once Ray is up.
- Python raises ``KeyboardInterrupt`` wherever the main thread is when the signal lands.
  Once in the resume test a SIGINT landed during Ray Tune's loop and the run went on to
  finish with exit 0: an exception raised inside a ``__del__`` or a weakref callback
  (Ray's object references have them) is printed as "Exception ignored" and dropped. So
  the handler also remembers the request, and ``raise_if_stop_requested`` (called by the
  Tune callback at every step of Tune's loop) raises it again until it gets through.

Written by hand: neither Ray nor Python keeps a stop request that was dropped.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested = threading.Event()
_ignored: set[int] = set()


@contextlib.contextmanager
def catching_stop_requests() -> Iterator[None]:
    """For the whole run: SIGINT and SIGTERM raise ``KeyboardInterrupt`` and are
    remembered; the handlers in place before come back afterwards. Call ``install``
    again once Ray is up (it replaces the SIGTERM handler)."""
    main = threading.current_thread() is threading.main_thread()  # signals only reach the main thread
    previous = {signum: signal.getsignal(signum) for signum in _SIGNALS} if main else {}
    # a signal ignored when we start stays ignored (a shell's background job ignores SIGINT)
    _ignored.update(signum for signum, handler in previous.items() if handler == signal.SIG_IGN)
    install()
    try:
        yield
    finally:
        _requested.clear()
        _ignored.clear()
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def install() -> None:
    """Our handler for SIGINT and SIGTERM (from the main thread; elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_IGN if signum in _ignored else _handler)


def raise_if_stop_requested() -> None:
    """Raise the stop request again if it was dropped on the way."""
    if _requested.is_set():
        raise KeyboardInterrupt


def _handler(signum: int, frame: Any) -> None:  # noqa: ARG001
    _requested.set()
    raise KeyboardInterrupt
