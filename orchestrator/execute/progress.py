"""Live progress per arm (rich): done / running / failed / stopped, best, elapsed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ArmProgress:
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

    def offer(self, value: Any) -> None:
        if isinstance(value, (int, float)) and value == value:
            if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
                self.best = float(value)


class Progress:
    """A rich live table; a no-op when quiet (CI, ``--quiet``) or not a terminal."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.arms: dict[tuple[str, str], ArmProgress] = {}
        self._live = None

    def __enter__(self) -> "Progress":
        if not self.quiet:
            from rich.console import Console
            from rich.live import Live

            console = Console(stderr=True)
            if console.is_terminal:
                self._live = Live(self._table(), console=console, refresh_per_second=2, transient=False)
                self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(*exc)
            self._live = None

    def arm(self, arm: str, phase: str, total: int, metric: str, mode: str) -> ArmProgress:
        state = ArmProgress(arm, phase, total, mode, metric)
        self.arms[(arm, phase)] = state
        self.refresh()
        return state

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())

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
                state.arm, state.phase, f"{state.done}/{state.total}", str(state.running), str(state.failed),
                str(state.stopped), best, f"{state.suggest_s:.2f}", f"{time.monotonic() - state.started:.0f}s",
            )
        return table
