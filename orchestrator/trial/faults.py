"""Why a trial fails, and which failures are worth a retry.

Two kinds of failure, handled differently:

- A **trial fault** is the trial's own doing: an exception in a method, a NaN loss,
  memory over ``search.trial_memory_mb``, time over ``search.trial_timeout_s``. Under
  a fixed seed it happens again on every retry, so it is *not* retried: the trial
  reports the reason as its last result (``failure_result``) and ends; the driver
  records it FAILED with that reason and the search goes on.
- A **transient failure** is the infrastructure's: the worker process died (a node
  was lost, the OOM killer struck), Ray lost an object, a connection dropped. These
  propagate to Ray Tune, whose ``FailureConfig(max_failures=search.max_retries)``
  retries the trial from scratch.

Ray Tune itself cannot tell the two apart (it retries every error), hence this module.
"""

from __future__ import annotations

import traceback
from typing import Any

#: Keys of the result a failed trial reports instead of raising.
ERROR_KEY, TRACE_KEY = "trial_error", "trial_error_trace"


class TrialFault(Exception):
    """A failure of the trial itself: recorded with its reason, never retried."""


class TrialTimeoutError(TrialFault, TimeoutError):
    """The trial ran past ``search.trial_timeout_s``."""


class TrialHungError(TrialTimeoutError):
    """Raised inside a trial that hangs within a step (by ``orchestrator.trial.watchdog``)."""

    message = "trial hung inside a step past its time budget (search.trial_timeout_s)"

    def __init__(self, *args: Any) -> None:
        super().__init__(*(args or (self.message,)))


class NonFiniteLossError(TrialFault, FloatingPointError):
    """The loss became NaN or infinite."""


class MemoryLimitError(TrialFault, MemoryError):
    """The trial's peak memory went over ``search.trial_memory_mb``."""


def is_transient(exc: BaseException) -> bool:
    """Failures of the infrastructure, which a retry can cure."""
    if isinstance(exc, TrialFault):
        return False
    try:
        from ray.exceptions import RayError
    except ImportError:  # pragma: no cover - ray is a dependency
        RayError = ()  # type: ignore[assignment,misc]
    return isinstance(exc, (ConnectionError, RayError))


def failure_result(exc: BaseException) -> dict[str, str]:
    """What a trial reports as its last result when it fails of its own doing."""
    reason = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    return {ERROR_KEY: reason[:500], TRACE_KEY: "".join(traceback.format_exception(exc))[-20000:]}
