"""The report's figures, as PNG files (matplotlib, Agg canvas, no global pyplot state).

    >>> plots = make_plots(summary, Path("reports/x"))     # doctest: +SKIP
    >>> [p.path.name for p in plots]                         # doctest: +SKIP
    ['pareto.png', 'history.png', 'confirmation.png']

Every function takes a ``RunSummary`` (or plain numbers) and writes one file; none reads
MLflow. Colours are fixed per arm across all figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from orchestrator.finite import is_finite_number
from orchestrator.results import COMPLETED, FAILED, INFEASIBLE, STOPPED

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from orchestrator.report.collect import ArmSummary, RunSummary

DPI = 130
FLOPS = "flops_ratio"


@dataclass(frozen=True)
class Plot:
    path: Path
    title: str
    caption: str


def pareto_front(points: Sequence[tuple[float, float]], maximize: bool = True) -> list[int]:
    """Indices of the non-dominated points when x (cost) is minimised and y is maximised
    (or minimised with ``maximize=False``), ordered by increasing x. A point is dominated
    when another is at least as good in both and strictly better in one; exact duplicates
    of a front point are all kept."""
    sign = 1.0 if maximize else -1.0
    finite = [i for i, (x, y) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]
    order = sorted(finite, key=lambda i: (points[i][0], -sign * points[i][1]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        x, y = points[i][0], sign * points[i][1]
        if y > best:
            front.append(i)
            best = y
        elif front and y == best and (x, y) == (points[front[-1]][0], sign * points[front[-1]][1]):
            front.append(i)
    return front


def best_so_far(values: Sequence[float], maximize: bool = True) -> list[float]:
    """Running best of a trial sequence; NaN (failed trials) keeps the previous best."""
    out: list[float] = []
    best = math.nan
    for value in values:
        if math.isfinite(value) and (math.isnan(best) or (value > best if maximize else value < best)):
            best = value
        out.append(best)
    return out


def arm_colours(arms: Sequence[str]) -> dict[str, str]:
    from matplotlib import colormaps

    tab10 = colormaps["tab10"]
    palette = [tab10(i) for i in range(tab10.N)]  # its 10 colours, as RGBA
    return {arm: _hex(palette[i % len(palette)]) for i, arm in enumerate(arms)}


def make_plots(summary: RunSummary, folder: Path) -> list[Plot]:
    """Every figure the summary has data for, written into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    made = [
        plot_pareto(summary, folder / "pareto.png"),
        plot_history(summary, folder / "history.png"),
        plot_confirmation(summary, judged_metrics(summary), folder / "confirmation.png"),
    ]
    return [p for p in made if p is not None]


def judged_metrics(summary: RunSummary) -> list[str]:
    """The test metric first, then every metric a claim refers to, in claim order."""
    from orchestrator.claims import parse_claim

    names = [f"test_{summary.metric}"]
    for text in summary.claims + (summary.posthoc.claims if summary.posthoc else []):
        try:
            refs = parse_claim(text).references()
        except ValueError:
            continue
        names.extend(ref.metric for ref in refs)
    return list(dict.fromkeys(names))


# -- Pareto front -------------------------------------------------------------------------
def plot_pareto(summary: RunSummary, path: Path) -> Plot | None:
    metric = f"val_{summary.metric}"
    maximize = summary.objectives().get(metric, "max") == "max"
    colours = arm_colours([a.arm for a in summary.arms])
    points, owners = [], []
    for arm in summary.arms:
        for trial in arm.trials:
            x, y = trial.metrics.get(FLOPS), trial.metrics.get(metric)
            if trial.status != FAILED and is_finite_number(x) and is_finite_number(y):
                points.append((float(x), float(y)))
                owners.append((arm, trial))
    if not points:
        return None
    fig, ax = _figure(8.4, 4.6)
    eligible = [i for i, (_, t) in enumerate(owners) if t.status in (COMPLETED, INFEASIBLE)]
    front = [eligible[i] for i in pareto_front([points[i] for i in eligible], maximize)]
    if front:
        xs, ys = zip(*(points[i] for i in front), strict=True)
        ax.plot(xs, ys, drawstyle="steps-post", color="0.25", lw=1.2, ls="--", zorder=1, label="Pareto front")
        ax.scatter(xs, ys, s=150, facecolors="none", edgecolors="0.25", lw=1.2, zorder=3)
    markers: dict[str, str] = {COMPLETED: "o", INFEASIBLE: "X", STOPPED: "v"}
    shown: set[tuple[str, str]] = set()
    for (x, y), (arm, trial) in zip(points, owners, strict=True):
        key = (arm.arm, trial.status)
        label = arm.arm if trial.status == COMPLETED else f"{arm.arm} ({trial.status.lower()})"
        ax.scatter(
            [x],
            [y],
            s=46,
            marker=markers.get(trial.status, "o"),
            color=colours[arm.arm],
            alpha=0.75,
            edgecolors="white",
            lw=0.6,
            zorder=2,
            label=None if key in shown else label,
        )
        shown.add(key)
    _count_coincident(ax, points, owners)
    for arm in summary.arms:
        best = arm.best_trial()
        if best and is_finite_number(best.metrics.get(FLOPS)) and is_finite_number(best.metrics.get(metric)):
            ax.scatter(
                [best.metrics[FLOPS]],
                [best.metrics[metric]],
                marker="*",
                s=220,
                color=colours[arm.arm],
                edgecolors="black",
                lw=0.8,
                zorder=4,
            )
    ax.scatter([], [], marker="*", s=120, color="white", edgecolors="black", label="selected config")
    xs_all = [p[0] for p in points]
    if min(xs_all) > 0 and max(xs_all) / min(xs_all) > 20:
        ax.set_xscale("log")
    _pad(ax, xs_all, [p[1] for p in points])
    ax.set_xlabel("flops_ratio  (adapter FLOPs / unmerged LoRA r=8; lower is cheaper)")
    ax.set_ylabel(f"{metric} (validation)")
    ax.set_title(f"Search trials: {metric} vs flops_ratio ({len(points)} trials)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
    _save(fig, path)
    return Plot(
        path,
        "Pareto front: validation score vs FLOPs",
        f"Every finished search trial ({metric} on the validation split vs flops_ratio), coloured by arm; "
        "the dashed line joins the non-dominated trials over all arms (circled; early-stopped trials are "
        "not eligible); stars mark each arm's selected configuration.",
    )


def _count_coincident(ax: Axes, points: list[tuple[float, float]], owners: list) -> None:
    """Trials of one arm with identical values (a fixed rank gives one flops_ratio) hide
    each other: say how many sit on each such point."""
    import collections

    stacks = collections.Counter((arm.arm, x, y) for (x, y), (arm, _) in zip(points, owners, strict=True))
    for (_arm, x, y), count in stacks.items():
        if count > 1:
            ax.annotate(f"×{count}", (x, y), xytext=(7, -12), textcoords="offset points", fontsize=8, color="0.2")


# -- optimisation history -------------------------------------------------------------------
def plot_history(summary: RunSummary, path: Path) -> Plot | None:
    objective, mode = next(iter(summary.objectives().items()))
    maximize = mode == "max"
    colours = arm_colours([a.arm for a in summary.arms])
    fig, ax = _figure(7.2, 4.3)
    drawn = 0
    styles = ("-", "--", "-.", ":")
    for index, arm in enumerate(summary.arms):
        values = [float(t.metrics.get(objective, math.nan)) if t.status != FAILED else math.nan for t in arm.trials]
        if not any(math.isfinite(v) for v in values):
            continue
        numbers = list(range(1, len(values) + 1))
        colour = colours[arm.arm]
        offset = (index - (len(summary.arms) - 1) / 2) * 0.1  # arms' dots side by side, not on top of each other
        for status, marker in ((STOPPED, "v"), (None, "o")):
            chosen = [
                (n + offset, v)
                for n, v, t in zip(numbers, values, arm.trials, strict=True)
                if (t.status == STOPPED) == (status == STOPPED)
            ]
            if chosen:
                chosen_x, chosen_y = zip(*chosen, strict=True)
                ax.scatter(
                    chosen_x,
                    chosen_y,
                    s=26,
                    marker=marker,
                    color=colour,
                    alpha=0.55,
                    edgecolors="white",
                    lw=0.4,
                    zorder=2,
                )
        running = best_so_far(values, maximize)
        ax.plot(
            numbers,
            running,
            drawstyle="steps-post",
            color=colour,
            ls=styles[index % len(styles)],
            lw=max(1.2, 2.6 - 0.4 * index),
            zorder=3,
            label=f"{arm.arm} (best {_fmt(running[-1])})",
        )
        failed = [n for n, t in zip(numbers, arm.trials, strict=True) if t.status == FAILED]
        if failed:  # no value to plot: mark them on the bottom edge
            ax.scatter(
                [n + offset for n in failed],
                [0.03] * len(failed),
                marker="x",
                color=colour,
                s=36,
                zorder=4,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
            )
        drawn += 1
    if not drawn:
        return None
    ax.set_xlabel("trial (in start order)")
    ax.set_ylabel(f"{objective} (validation)" if objective.startswith("val_") else objective)
    ax.set_title(f"Optimisation history: best {objective} so far ({mode})")
    # a linear axis's default locator is an AutoLocator, a MaxNLocator
    cast("MaxNLocator", ax.xaxis.get_major_locator()).set_params(integer=True)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    _save(fig, path)
    return Plot(
        path,
        "Optimisation history",
        f"Best {objective} found so far by each arm's search (line) and each trial's own value (dots); "
        "v marks early-stopped trials, x on the bottom edge failed ones. The first trial of an arm is the paper's "
        "default configuration when its space has one.",
    )


# -- confirmation distributions ---------------------------------------------------------------
def plot_confirmation(summary: RunSummary, metrics: list[str], path: Path) -> Plot | None:
    from orchestrator.report.numbers import mean_and_half_width

    colours = arm_colours([a.arm for a in summary.arms])
    present = [
        m
        for m in metrics
        if any(is_finite_number(c.metrics.get(m)) for a in summary.arms for c in a.usable_confirms())
    ]
    if not present:
        return None
    cols = min(3, len(present))
    rows = math.ceil(len(present) / cols)
    fig, axes = _figure(3.6 * cols + 0.6, 3.5 * rows, rows, cols)
    flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for ax, metric in zip(flat, present, strict=False):  # the grid may have spare axes
        _strip(ax, summary.arms, metric, colours, summary.confidence, mean_and_half_width)
    for ax in flat[len(present) :]:
        ax.set_visible(False)
    level = 100 * summary.confidence
    handle = flat[0].errorbar([], [], yerr=[], fmt="D", ms=5, color="black", capsize=4)
    fig.legend(  # type: ignore[call-overload]  # matplotlib's stub wants Artists; it takes an errorbar's container
        [handle],
        [f"mean with its one-sided {level:.3g}% lower and upper bounds (t over seeds); dots: one per seed"],
        loc="outside lower center",
        fontsize=8,
        frameon=False,
    )
    seeds = sorted({c.seed for a in summary.arms for c in a.usable_confirms() if c.seed is not None})
    fig.suptitle(f"Confirmation runs: {len(seeds)} fresh seeds per arm, {summary.confirm_split} split", fontsize=11)
    _save(fig, path)
    return Plot(
        path,
        "Per-seed confirmation results",
        f"One dot per confirmation seed (each arm's best configuration retrained); the bar is the mean with its "
        f"one-sided {level:.3g}% bounds (t over seeds), boxes appear from 4 seeds. Metrics: {', '.join(present)}.",
    )


def _strip(
    ax: Axes, arms: list[ArmSummary], metric: str, colours: dict[str, str], confidence: float, interval
) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for position, arm in enumerate(arms):
        values = [float(c.metrics[metric]) for c in arm.usable_confirms() if is_finite_number(c.metrics.get(metric))]
        if not values:
            continue
        colour = colours[arm.arm]
        if len(values) >= 4:
            ax.boxplot(
                [values],
                positions=[position],
                widths=0.5,
                showfliers=False,
                patch_artist=True,
                boxprops={"facecolor": colour, "alpha": 0.18, "edgecolor": colour},
                medianprops={"color": colour},
                whiskerprops={"color": colour},
                capprops={"color": colour},
            )
        jitter = rng.uniform(-0.12, 0.12, len(values))
        ax.scatter(position + jitter, values, s=30, color=colour, alpha=0.85, edgecolors="white", lw=0.5, zorder=3)
        mean, half = interval(values, confidence)
        ax.errorbar(
            [position + 0.3],
            [mean],
            yerr=None if half is None else [[half], [half]],
            fmt="D",
            ms=5,
            color="black",
            capsize=4,
            lw=1.2,
            zorder=4,
        )
    ax.set_xticks(range(len(arms)), [a.arm for a in arms], rotation=20 if len(arms) > 4 else 0)
    ax.set_xlim(-0.6, len(arms) - 0.4)
    ax.set_title(metric, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.ticklabel_format(axis="y", useOffset=False)


# -- helpers ----------------------------------------------------------------------------------
def _figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=rows * cols == 1)
    if rows * cols == 1:
        axes.grid(alpha=0.3)
    return fig, axes


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)


def _pad(ax: Axes, xs: list[float], ys: list[float]) -> None:
    """Room around points that share one value (a fixed-rank LoRA has one flops_ratio)."""
    for values, setter, log in ((xs, ax.set_xlim, ax.get_xscale() == "log"), (ys, ax.set_ylim, False)):
        low, high = min(values), max(values)
        if log:
            setter(low / 1.5, high * 1.5)
            continue
        span = high - low or max(abs(high) * 0.1, 0.05)
        setter(low - 0.12 * span, high + 0.12 * span)


def _fmt(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "-"


def _hex(rgb: tuple[float, ...]) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgb[:3])
