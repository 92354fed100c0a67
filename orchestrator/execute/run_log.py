"""What a run prints into a log, and where Ray's own lines go instead of the terminal.

When standard error is not a terminal (a cluster job, ``nohup``, CI, ``| tee``) there is
no live table to watch, so ``progress.Progress`` prints one plain line per finished trial
and per phase instead; the lines are built here, in one stable, greppable format::

    orchestrate: [lora] trial 7 COMPLETED val_accuracy=0.781 flops_ratio=0.25 (41 s)
    orchestrate: [lora] confirm seed 2 FAILED RuntimeError: out of memory (3 s)
    orchestrate: [lora] search finished: 3 trials (3 COMPLETED) at 130 s

A trial's line ends with its own duration, ``(41 s)``; a phase line with the seconds since
the run started, ``at 130 s``.

Ray's driver logs through the Python logger ``ray`` (its children included: Ray Tune's
"Experiment state snapshotting has been triggered multiple times..." came 10 times, 3 lines
each, in one default run; ``ray.init`` warns about token authentication). During a run
those records go to a file under the state folder (``ray_log_path``) instead of standard
error: the user's output keeps only what the run itself has to say.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.results import TrialRecord

#: How every line of the run's own output starts (``grep '^orchestrate:'``).
PREFIX = "orchestrate:"
#: Ray's lines of each run, under the state folder.
LOGS_FOLDER = "logs"
#: The longest failure reason a trial's line shows (the full trace is in MLflow: error.txt).
REASON_CHARS = 160
#: Ray log files kept in a state folder's ``logs/``: the newest ones; older ones are removed
#: when a run starts (a state folder used for months would otherwise hold one per run).
KEEP_LOGS = 30


def trial_line(
    arm: str, label: str, status: str, values: Mapping[str, float], seconds: float, reason: str = ""
) -> str:
    """One finished trial or confirmation seed: ``label`` is ``trial 7`` or ``confirm
    seed 2``, ``values`` the objectives it reported (none for a failed trial, whose
    ``reason`` is shown instead), ``seconds`` its own duration.

    >>> trial_line("lora", "trial 7", "COMPLETED", {"val_accuracy": 0.78125, "flops_ratio": 0.25}, 41.2)
    'orchestrate: [lora] trial 7 COMPLETED val_accuracy=0.7812 flops_ratio=0.25 (41 s)'
    """
    shown = [f"{name}={value:.4g}" for name, value in values.items()]
    if reason:
        shown.append(_one_line(reason)[:REASON_CHARS])
    detail = "".join(f" {part}" for part in shown)
    return f"{PREFIX} [{arm}] {label} {status}{detail} ({seconds:.0f} s)"


def phase_line(text: str, since_start: float) -> str:
    """A step of the run (a search started or finished, a round of confirmation, the
    judge), with the seconds since the run started.

    >>> phase_line("[lora] search started: 3 trials", 12.4)
    'orchestrate: [lora] search started: 3 trials at 12 s'
    """
    return f"{PREFIX} {text} at {since_start:.0f} s"


def search_finished(arm: str, trials: Sequence[TrialRecord]) -> str:
    """The phase text of an arm whose search is done: its trials by status (those
    reused from earlier runs included).

    >>> from orchestrator.results import TrialRecord
    >>> statuses = ["COMPLETED", "FAILED", "COMPLETED"]
    >>> done = [TrialRecord(str(i), "lora", "trial", {}, status=s) for i, s in enumerate(statuses)]
    >>> search_finished("lora", done)
    '[lora] search finished: 3 trials (2 COMPLETED, 1 FAILED)'
    """
    counts = Counter(str(trial.status) for trial in trials)
    by_status = ", ".join(f"{count} {status}" for status, count in counts.most_common())
    return f"[{arm}] search finished: {len(trials)} trials ({by_status or 'none ran'})"


def ray_log_path(state_dir: Path, hypothesis: str, profile: str, now: datetime | None = None) -> Path:
    """Where one run's Ray lines go: ``<state_dir>/logs/<hypothesis>-<profile>-<time>.log``
    (local time, to the second; two runs of one hypothesis and profile never overlap:
    the run lock refuses the second).

    >>> ray_log_path(Path("/s"), "tiny", "smoke", datetime(2026, 11, 30, 5, 4, 16)).as_posix()
    '/s/logs/tiny-smoke-20261130-050416.log'
    """
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return state_dir / LOGS_FOLDER / f"{hypothesis}-{profile}-{stamp}.log"


def prune_logs(folder: Path, keep: int = KEEP_LOGS) -> list[Path]:
    """Remove all but the ``keep`` newest ``*.log`` files of ``folder`` (by modification
    time); returns what it removed. A file another process removes first is skipped.

    >>> import tempfile, os
    >>> folder = Path(tempfile.mkdtemp())
    >>> for i in range(4):
    ...     _ = (folder / f"run-{i}.log").write_text("x")
    ...     os.utime(folder / f"run-{i}.log", (i, i))
    >>> sorted(p.name for p in prune_logs(folder, keep=2))
    ['run-0.log', 'run-1.log']
    >>> sorted(p.name for p in folder.iterdir())
    ['run-2.log', 'run-3.log']
    """
    if not folder.is_dir():
        return []
    logs = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    removed = []
    for old in logs[keep:]:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
            removed.append(old)
    return removed


@contextlib.contextmanager
def ray_lines_to_file(path: Path) -> Iterator[None]:
    """For the block, the ``ray`` logger (every ``ray.*`` logger propagates to it) writes
    to ``path`` instead of its handlers (Ray's own writes to standard error); as before
    afterwards, its level too (``ray.init`` sets it). Call it after ``import ray``: the
    import installs Ray's handler."""
    ray_logger = logging.getLogger("ray")
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handlers, propagate, level = list(ray_logger.handlers), ray_logger.propagate, ray_logger.level
    ray_logger.handlers = [to_file]
    ray_logger.propagate = False  # nor through the root logger's handlers to the terminal
    try:
        yield
    finally:
        ray_logger.handlers = handlers
        ray_logger.propagate = propagate
        ray_logger.setLevel(level)
        to_file.close()


def _one_line(text: str) -> str:
    return " ".join(text.split())
