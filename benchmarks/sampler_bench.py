"""What the sampler benchmarks share (samplers.py, samplers_routed.py, samplers_fidelity.py):
the run labels by concurrency, the report callback that keeps a training's per-epoch
accuracy, the commit a table was collected at, and the one-panel-per-concurrency figure."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def label(name: str, concurrency: int) -> str:
    """A sampler's row name: ``tpe`` one trial at a time, ``tpe (4 async)`` with 4 at once."""
    return name if concurrency == 1 else f"{name} ({concurrency} async)"


def keep_accuracy(curve: list[float], metrics: dict[str, Any], artifacts: object) -> None:
    """``run_trial``'s report callback (bound with ``functools.partial``): each epoch's
    validation accuracy, in order."""
    curve.append(float(metrics["val_accuracy"]))


def commit() -> str:
    """The checkout's short commit, for a collected table's header."""
    found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return found.stdout.strip() or "unknown"


@contextmanager
def panels_by_concurrency(results: dict[str, Any], path: Path) -> Iterator[list[tuple[Any, str, dict[str, Any]]]]:
    """One axis per concurrency (``label``'s suffix; none = "sequential"), each with its
    rows: yields ``[(axis, title, {row name: runs})]`` and saves the figure to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, dict[str, Any]] = {}
    for name, runs in results.items():
        panels.setdefault(name.partition(" (")[2].rstrip(")") or "sequential", {})[name] = runs
    fig, axes = plt.subplots(1, len(panels), figsize=(7.0 * len(panels), 4.5), dpi=110, squeeze=False)
    yield [(ax, title, panel) for ax, (title, panel) in zip(axes[0], panels.items(), strict=True)]
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
