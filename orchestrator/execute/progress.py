"""What a run shows while it goes: a rich live table per arm (done / running / failed /
stopped, best, elapsed) in a terminal; plain lines (``run_log``) when standard error is
not one, so that a log file of a long run says what happened and when."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.execute.run_log import phase_line, trial_line
from orchestrator.results import FAILED, STOPPED, TrialRecord

if TYPE_CHECKING:
    from rich.live import Live


@dataclass
class ArmProgress:
    """One arm in one phase (``search``, ``confirm``, ``confirm 2``...).

    Attributes:
        metric, mode: the value whose best the table shows.
        shown: the values a finished trial's line shows besides ``metric`` (the objectives).
        on_line: where a finished trial's line goes; None: no lines (a terminal's live
            table, or ``--quiet``).
    """

    arm: str
    phase: str
    total: int
    mode: str
    metric: str
    running: int = 0
    done: int = 0
    failed: int = 0
    stopped: int = 0
    best: float | None = None
    started: float = field(default_factory=time.monotonic)
    suggest_s: float = 0.0
    shown: tuple[str, ...] = ()
    on_line: Callable[[str], None] | None = None

    def offer(self, value: Any) -> None:
        is_number = isinstance(value, (int, float)) and value == value
        if is_number and (self.best is None or (value > self.best if self.mode == "max" else value < self.best)):
            self.best = float(value)

    def finished(self, label: str, record: TrialRecord, seconds: float) -> None:
        """A trial (``label``: ``trial 7``, ``confirm seed 2``) ended after ``seconds``:
        counted, and its line printed when the run prints lines."""
        self.running = max(0, self.running - 1)
        self.done += 1
        if record.status == FAILED:
            self.failed += 1
        elif record.status == STOPPED:
            self.stopped += 1
        if self.on_line is not None:
            reason = (record.error or "") if record.status == FAILED else ""
            values = {name: record.metrics[name] for name in self._names() if _number(record.metrics.get(name))}
            self.on_line(trial_line(self.arm, label, record.status, values, seconds, reason))

    def _names(self) -> list[str]:
        return list(dict.fromkeys((self.metric, *self.shown)))


class Progress:
    """A rich live table in a terminal; plain lines when standard error is not a terminal
    (a log file, CI, a pipe); only warnings when quiet (``--quiet``)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.arms: dict[tuple[str, str], ArmProgress] = {}
        self.started = time.monotonic()
        #: plain lines per trial and phase, set on entering: not quiet and no terminal
        self.prints_lines = False
        self._live: Live | None = None

    def __enter__(self) -> Progress:
        if not self.quiet:
            from rich.console import Console
            from rich.live import Live

            console = Console(stderr=True)
            if console.is_terminal:
                self._live = Live(self._table(), console=console, refresh_per_second=2, transient=False)
                self._live.__enter__()
            else:
                self.prints_lines = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(*exc)
            self._live = None

    def arm(
        self, arm: str, phase: str, total: int, metric: str, mode: str, shown: tuple[str, ...] = ()
    ) -> ArmProgress:
        """The arm's counts for ``phase``; its finished trials print a line each when the
        run prints lines (``shown``: the values the line gives besides ``metric``)."""
        on_line = self._print if self.prints_lines else None
        state = ArmProgress(arm, phase, total, mode, metric, shown=shown, on_line=on_line)
        self.arms[(arm, phase)] = state
        self.refresh()
        return state

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())

    def phase(self, text: str) -> None:
        """``orchestrate: <text> at <seconds since the run started> s``, when the run
        prints lines (the live table shows the phases itself)."""
        if self.prints_lines:
            self._print(phase_line(text, time.monotonic() - self.started))

    def warn(self, text: str) -> None:
        """``orchestrate: warning: <text>``, printed even when quiet: something the run
        set aside (a damaged cache, a damaged archive line) that the user should know."""
        self._print(f"orchestrate: warning: {text}")

    def line(self, text: str) -> None:
        """A plain status line (printed even without a live table, unless quiet)."""
        if not self.quiet:
            self._print(text)

    def _print(self, text: str) -> None:
        """Above the live table while it shows, else on stderr."""
        if self._live is not None:
            self._live.console.print(text)
        else:
            import sys

            print(text, file=sys.stderr, flush=True)

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title="orchestrate", expand=False)
        for column in ("arm", "phase", "done", "running", "failed", "stopped", "best", "suggest s", "elapsed"):
            table.add_column(column)
        for state in self.arms.values():
            best = "-" if state.best is None else f"{state.metric}={state.best:.4f}"
            table.add_row(
                state.arm,
                state.phase,
                f"{state.done}/{state.total}",
                str(state.running),
                str(state.failed),
                str(state.stopped),
                best,
                f"{state.suggest_s:.2f}",
                f"{time.monotonic() - state.started:.0f}s",
            )
        return table


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
