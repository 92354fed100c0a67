"""The verdict table printed at the end of ``orchestrate run`` (and by ``judge``)."""

from __future__ import annotations

from typing import Any

STYLE = {"SUPPORTED": "green", "REFUTED": "red", "INCONCLUSIVE": "yellow"}


def console():
    """Wide enough for a table even when stdout is a file or a pipe (CI logs)."""
    import shutil

    from rich.console import Console

    width = shutil.get_terminal_size((160, 40)).columns
    return Console(width=max(width, 120), soft_wrap=False)


def print_verdicts(outcome: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = console()
    plan = outcome.plan
    metric = plan.task.metric
    arms = Table(
        title=f"{plan.name}: arms (best configuration of each search; confirmation on the {plan.confirm.split} split)"
    )
    for column in (
        "arm",
        "method",
        "trials ok/failed/stopped/infeasible",
        f"best val_{metric}",
        f"test_{metric} mean",
        "flops_ratio",
        "best params",
    ):
        arms.add_column(column)
    for arm in outcome.arms:
        counts = arm.counts()
        tests = [c.metrics[f"test_{metric}"] for c in arm.confirm if f"test_{metric}" in c.metrics]
        ratio = [c.metrics["flops_ratio"] for c in arm.confirm if "flops_ratio" in c.metrics]
        arms.add_row(
            arm.arm,
            arm.method,
            f"{counts['COMPLETED']}/{counts['FAILED']}/{counts['STOPPED']}/{counts['INFEASIBLE']}",
            _fmt(arm.best.metrics.get(f"val_{metric}") if arm.best else None),
            _fmt(sum(tests) / len(tests) if tests else None),
            _fmt(sum(ratio) / len(ratio) if ratio else None),
            ", ".join(f"{k}={_fmt(v)}" for k, v in (arm.best.params if arm.best else {}).items()),
        )
    out.print(arms)
    out.print(
        "[bold]verdicts[/] (flops_ratio is relative to UNMERGED LoRA r=8 on the same modules; "
        "a merged LoRA adds 0 FLOPs)"
    )
    for v in outcome.verdicts:
        style = STYLE.get(v.verdict, "white")
        out.print(f"  [{style}]{v.verdict:<12}[/] {v.claim}")
        seeds = ", ".join(f"{arm}={k}" for arm, k in v.n.items())
        out.print(
            f"               estimate {_fmt(v.estimate)}, "
            f"{v.confidence:.3g} interval [{_fmt(v.ci_low)}, {_fmt(v.ci_high)}] "
            f"({v.interval_method}; seeds {seeds}; look {v.look})"
        )
        out.print(f"               {escape(v.reason)}")  # a failed run's error may hold '[/...]'
    out.print(f"MLflow: experiment {outcome.experiment_id}, hypothesis run {outcome.parent_run_id}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
