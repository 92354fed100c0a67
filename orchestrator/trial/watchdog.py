"""Fail a trial that hangs *inside* a step, which the per-step time check cannot see.

``run_trial`` checks its deadline after every optimizer step; a step that never ends
(a deadlock, an endless loop in a method hook) never reaches that check. This
watchdog thread waits for the deadline plus a margin, then:

1. raises ``TrialHungError`` in the trial's thread (``PyThreadState_SetAsyncExc``),
   again every half second, since library code with a broad ``except`` may swallow
   one: a hang in Python code ends there, and the trial is recorded FAILED with
   that reason like any other trial fault;
2. if the thread is still stuck ``grace_s`` (5 s) later (a call into C that never
   returns), it ends the worker process with ``os._exit(HUNG_EXIT_CODE)``. Ray sees
   a dead worker; the driver names the reason from the elapsed time
   (``orchestrator.execute.recorder``). A killed worker is retried like any lost
   worker (``search.max_retries``), so a hard hang costs its budget once per attempt.

Written by hand: neither Ray Tune nor Python has a per-call timeout for a thread.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from typing import Any

from orchestrator.trial.faults import TrialHungError

HUNG_EXIT_CODE = 75


class HangWatchdog:
    """Context manager: guards the ``with`` body, run by the current thread."""

    def __init__(self, timeout_s: float | None, margin_s: float | None = None, grace_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        # the in-loop check normally fires first; the watchdog only catches real hangs
        self.margin_s = margin_s if margin_s is not None else max(2.0, 0.1 * (timeout_s or 0.0))
        self.grace_s = grace_s  # Python answers an async exception within milliseconds
        self.fired = False
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._target = 0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> HangWatchdog:
        if self.timeout_s:
            self._target = threading.get_ident()
            self._thread = threading.Thread(target=self._watch, name="orchestrate-hang-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._done.set()
            if self.fired:  # scheduled but maybe not delivered yet: never let it escape the block
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._target), None)

    def _watch(self) -> None:
        assert self.timeout_s
        if self._done.wait(self.timeout_s + self.margin_s):
            return
        error = type(
            "TrialHungError",
            (TrialHungError,),
            {"message": f"trial hung inside a step past its {self.timeout_s:g} s budget (search.trial_timeout_s)"},
        )
        give_up = time.monotonic() + self.grace_s
        while time.monotonic() < give_up:
            with self._lock:
                if self._done.is_set():
                    return
                self.fired = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._target), ctypes.py_object(error))
            if self._done.wait(0.5):
                return
        print(
            f"orchestrate: trial stuck in native code {self.grace_s:g} s after its time budget; ending the worker",
            file=sys.stderr,
            flush=True,
        )
        os._exit(HUNG_EXIT_CODE)
