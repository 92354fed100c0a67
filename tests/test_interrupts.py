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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_inside_a_store_write_is_raised_when_the_write_ends(sigint_default, signum):
    """``deferred_stop`` (every ``Tracker`` call runs in one): a real signal sent inside the
    block does not cut it short; the KeyboardInterrupt comes when it ends, once."""
    from orchestrator.execute.interrupts import deferred_stop

    done = []
    with catching_stop_requests():
        with pytest.raises(KeyboardInterrupt), deferred_stop():
            with deferred_stop():  # nested: raised at the outermost end only
                os.kill(os.getpid(), signum)
                done.append("inner")
            done.append("outer")
        assert done == ["inner", "outer"]
        with deferred_stop():  # the request was used up
            done.append("next")
    assert done == ["inner", "outer", "next"]


def test_a_tracker_call_finishes_its_write_before_the_stop(tmp_path, sigint_default):
    """The store sees the whole write made while the stop request arrived."""
    from helpers import new_mlflow_store
    from orchestrator.tracking import Tracker

    tracker = Tracker(new_mlflow_store(tmp_path))
    run_id = tracker.start_run(tracker.experiment_id("stop"), "r", {})

    def write_during_a_stop() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        tracker.client.set_tag(run_id, "written", "yes")

    with catching_stop_requests(), pytest.raises(KeyboardInterrupt):
        tracker._call(write_during_a_stop)
    assert tracker.get_run(run_id).data.tags["written"] == "yes"
