"""Stop requests are remembered until they get through (orchestrator.execute.interrupts);
the real signals are sent to a real run in test_resume.py."""

from __future__ import annotations

import os
import signal

import pytest

from orchestrator.execute.interrupts import catching_stop_requests, install, raise_if_stop_requested


def test_sigterm_and_sigint_raise_keyboard_interrupt_and_the_request_is_kept():
    for signum in (signal.SIGTERM, signal.SIGINT):
        with catching_stop_requests():
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signum)
                signal.sigtimedwait([], 0.5)  # let the handler run
            # as if the first KeyboardInterrupt had been dropped in a __del__: raised again
            with pytest.raises(KeyboardInterrupt):
                raise_if_stop_requested()
        raise_if_stop_requested()  # forgotten once the run is over


def test_the_previous_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with catching_stop_requests():
        install()  # again, as after ray.init
        assert signal.getsignal(signal.SIGTERM) is not before[0]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_signal_ignored_at_the_start_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a shell's background job
    try:
        with catching_stop_requests():
            install()
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
