"""One ``orchestrate run`` per hypothesis, profile and state folder at a time.

Two drivers of the same hypothesis in one state folder share its run state and its
MLflow hypothesis run: both resumed it and every arm, trial and confirmation ran twice
(measured: 4 arm runs, 8 trial and 8 confirm instead of 2/4/4). The second one now
refuses before it touches MLflow or Ray.

The lock is the kernel's (``fcntl.flock`` on ``STATE_DIR/locks/HYPOTHESIS--PROFILE.lock``),
not the existence of a pid file: the kernel drops it when the holder's process ends,
however it ends (SIGKILL, OOM killer, a crash), so a killed run never blocks the next
one and there is no staleness to guess. The file also holds the holder's pid, host and
start time, only to say who holds it.

- Shared folders: on Linux, NFS turns ``flock`` into a lock the server keeps (NFSv4, or v3
  with lockd), which excludes drivers on other machines too; a mount with ``nolock`` or
  ``local_lock=flock`` keeps locks per machine, and then two machines are not excluded.
  A machine that dies holding the lock loses it when the server's lease expires (about
  90 s on NFSv4).
- Windows has no ``fcntl``: there is no lock (as for ``tracking._first_connection_lock``).
  A pid-file fallback cannot tell a live holder there: ``os.kill(pid, 0)`` sends Ctrl-C
  on Windows instead of probing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from orchestrator.errors import InputError, RunLockedError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


def lock_path(state_dir: Path, hypothesis: str, profile: str) -> Path:
    """The lock file of one (hypothesis, profile) in ``state_dir``; the profile is made
    safe for a file name (two profiles that map to one name only wait for each other)."""
    safe_profile = re.sub(r"[^A-Za-z0-9_.-]", "_", profile)
    return state_dir / "locks" / f"{hypothesis}--{safe_profile}.lock"


@contextlib.contextmanager
def hold_run_lock(state_dir: Path, hypothesis: str, profile: str) -> Iterator[Path]:
    """Hold the run lock of (``hypothesis``, ``profile``) in ``state_dir`` for the block.

    Raises ``RunLockedError`` at once when another process holds it, and ``InputError``
    when ``state_dir`` cannot hold a lock file (it is a file, or not writable).
    Yields the lock file's path."""
    path = lock_path(state_dir, hypothesis, profile)
    if fcntl is None:
        yield path
        return
    handle = _open(path, state_dir)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(_refusal(path, hypothesis, profile, handle.read())) from None
        _write_holder(handle)
        try:
            yield path
        finally:
            handle.truncate(0)  # no holder any more; the file itself stays (see _open)
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def _open(path: Path, state_dir: Path) -> IO[str]:
    """The lock file, created if missing, opened without truncating (a holder's record
    must survive a refused opener). It is never deleted: deleting a locked file lets a
    late opener lock the deleted copy while a new opener locks a new file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8", errors="replace")
    except (FileExistsError, NotADirectoryError):
        raise InputError(
            f"--state-dir {state_dir} is not a folder (a file is in the way at {path.parent}): "
            "pass a folder, or move the file"
        ) from None
    except OSError as exc:
        raise InputError(f"cannot create the run lock {path}: {exc.strerror}; pass a writable --state-dir") from None


def _write_holder(handle: IO[str]) -> None:
    handle.seek(0)
    handle.truncate(0)
    handle.write(
        json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        )
    )
    handle.flush()


def _refusal(path: Path, hypothesis: str, profile: str, record: str) -> str:
    """The one-line message for a second run: who holds the lock and what to do."""
    try:
        holder = json.loads(record)
        who = f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        who = "a process that is just starting"  # it holds the lock but has not written itself yet
    return (
        f"hypothesis {hypothesis!r} (profile {profile!r}) is already running in this state folder ({who}; "
        f"lock {path}): wait for it to finish or stop it, then run the same command again"
    )
