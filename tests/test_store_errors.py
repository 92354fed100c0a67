"""``tracking.store_error``: what a store's failure says, turned into one line a user can act on.

The real faults are caused in ``test_damaged_state.py`` (sqlite) and ``test_tracking_server.py``
(a server's 401/403); these fast cases pin the wording rules they rely on."""

from __future__ import annotations

import pytest

from orchestrator.tracking import store_error


@pytest.mark.parametrize(
    ("text", "uri", "expected"),
    [
        ("attempt to write a readonly database", "sqlite:///x.db", "is read-only (readonly database)"),
        ("[Errno 13] Permission denied: 'x.db'", "sqlite:///x.db", "is read-only (permission denied)"),
        # a server's artifact upload refused says only "Permission denied": that is no read-only file
        ("Permission denied", "http://127.0.0.1:5000", "refused the request (error code 403: permission denied)"),
        ("API request failed with error code 401", "https://mlflow.example", "refused the credentials"),
        ("database or disk is full", "sqlite:///x.db", "the disk is full"),
        ("file is not a database", "sqlite:///x.db", "is damaged"),
    ],
)
def test_each_store_fault_gets_its_one_line(text: str, uri: str, expected: str):
    error = store_error(RuntimeError(text), uri)
    assert error is not None and expected in str(error), error


def test_the_cause_of_a_wrapped_error_is_read_and_other_errors_are_not_store_errors():
    try:
        try:
            raise OSError("No space left on device")
        except OSError as inner:
            raise RuntimeError("log_batch failed") from inner
    except RuntimeError as outer:
        wrapped = outer
    assert "the disk is full" in str(store_error(wrapped, "sqlite:///x.db"))
    assert store_error(ValueError("bad value for lr"), "http://127.0.0.1:5000") is None
