"""The driver's stop handlers (orchestrator.execute.interrupts); the real signals are sent
to a real run in test_resume.py."""

from __future__ import annotations

import os
import signal

import pytest

from orchestrator.execute.interrupts import catching_stop_requests, install


@pytest.fixture
def sigint_default():
    """SIGINT as a foreground process has it (the suite itself may run as a background
    job, which ignores SIGINT; that case has its own test below)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sigterm_and_sigint_raise_keyboard_interrupt_even_after_another_handler_took_over(sigint_default):
    for signum in (signal.SIGTERM, signal.SIGINT):
        with catching_stop_requests():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as ray.init does with its own handler
            install()
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signum)
                signal.sigtimedwait([], 0.5)  # let the handler run


def test_the_previous_handlers_come_back(sigint_default):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with catching_stop_requests():
        install()
        assert signal.getsignal(signal.SIGTERM) is not before[0]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_signal_ignored_at_the_start_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a shell's background job
    try:
        with catching_stop_requests():
            install()
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
    finally:
        signal.signal(signal.SIGINT, previous)
