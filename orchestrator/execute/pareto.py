"""Pareto fronts of multi-objective searches (pure functions, plus one plot)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """``a`` is at least as good as ``b`` in every objective and better in one."""
    better = False
    for x, y, mode in zip(a, b, modes, strict=True):
        x, y = (x, y) if mode == "max" else (-x, -y)
        if x < y:
            return False
        better = better or x > y
    return better


def pareto_indices(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points, in input order (O(n^2); n is trials)."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p, modes) for j, q in enumerate(points) if j != i)]


def plot_front(
    points: Sequence[Sequence[float]],
    front: Sequence[int],
    names: Sequence[str],
    modes: Sequence[str],
    title: str,
    path: Path,
) -> Path:
    """Scatter of every trial on the first two objectives, the front connected."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    ax.scatter(xs, ys, s=22, color="#9aa5b1", label="trial")
    ordered = sorted(front, key=lambda i: xs[i])
    ax.plot([xs[i] for i in ordered], [ys[i] for i in ordered], "o-", color="#d1495b", label="Pareto front")
    ax.set_xlabel(f"{names[0]} ({modes[0]})")
    ax.set_ylabel(f"{names[1]} ({modes[1]})")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
