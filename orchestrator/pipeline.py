"""``orchestrate run`` end to end: the plan run (search, confirm, judge:
``execute.runner.run_plan``), then its report, written from MLflow alone.

The judge stays inside ``run_plan``: its verdicts are logged before the hypothesis's run
is closed FINISHED, and a failure while judging closes the run FAILED with the reason.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.execute.progress import Progress
from orchestrator.execute.runner import RunOptions, RunOutcome, run_plan
from orchestrator.plan import Plan


def run_hypothesis(plan: Plan, options: RunOptions) -> RunOutcome:
    """Run ``plan`` (``run_plan``), then write its report (``outcome.report_path``; None
    when it could not be written)."""
    outcome = run_plan(plan, options)
    outcome.report_path = _report(outcome, options)
    return outcome


def _report(outcome: RunOutcome, options: RunOptions) -> Path | None:
    """The report is written from MLflow alone, after the run is closed; a plotting
    error must not turn a finished run into a failed one."""
    from orchestrator.report import write_report

    parent_id = outcome.parent_run_id
    try:
        return write_report(outcome.tracking_uri, parent_id, options.report_dir)
    except Exception as exc:
        Progress(options.quiet).line(
            f"report not written ({type(exc).__name__}: {exc}); run `orchestrate report {parent_id}`"
        )
        return None
