"""``orchestrate report`` and ``orchestrate judge``: read a finished run back from MLflow.

``cli.main`` registers them with ``add_report_commands(sub)``. Both take a hypothesis name
(its newest FINISHED run) or an MLflow run id. Exit codes as for ``run``: 0 done
(whatever the verdicts, unless ``--fail-on``), 2 nothing to report (unknown name or run,
a bad ``--spec`` file).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.cli.main import EXIT_BAD_INPUT, EXIT_OK, print_error, verdict_exit_code

TARGET_HELP = "a hypothesis name (its newest FINISHED run) or an MLflow run id"
URI_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"


def add_report_commands(subparsers: Any) -> None:
    """Register ``report`` and ``judge`` on the CLI's subparsers."""
    p = subparsers.add_parser("report", help="write report.md and a self-contained report.html for a finished run")
    p.add_argument("target", help=TARGET_HELP)
    p.add_argument("--out", help="folder for the report (default: reports/<hypothesis>-<run id>)")
    p.add_argument("--tracking-uri", help=URI_HELP)
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("judge", help="re-judge a finished run's claims from MLflow alone (no training)")
    p.add_argument("target", help=TARGET_HELP)
    p.add_argument(
        "--spec", help="judge this file's expected: block instead (POST-HOC if it differs from the registered one)"
    )
    p.add_argument("--tracking-uri", help=URI_HELP)
    p.add_argument("--fail-on", choices=["refuted", "inconclusive"], help="non-zero exit for these verdicts (CI use)")
    p.set_defaults(func=cmd_judge)


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.report import ReportError, resolve_hypothesis_run, write_report
    from orchestrator.tracking import Tracker

    tracker = Tracker(args.tracking_uri)
    try:
        run_id = resolve_hypothesis_run(tracker, args.target)
        path = write_report(tracker.uri, run_id, args.out)
    except ReportError as exc:
        print_error(f"orchestrate: {exc}")
        return EXIT_BAD_INPUT
    print(f"{path}\n{path.with_name('report.html')}\n(also logged under report/ on MLflow run {run_id})")
    return EXIT_OK


def cmd_judge(args: argparse.Namespace) -> int:
    from orchestrator.judge.rejudge import record_posthoc, rejudge
    from orchestrator.report import ReportError, resolve_hypothesis_run, write_report
    from orchestrator.tracking import Tracker

    tracker = Tracker(args.tracking_uri)
    try:
        run_id = resolve_hypothesis_run(tracker, args.target)
        judgement = rejudge(tracker, run_id, args.spec)
    except ReportError as exc:
        print_error(f"orchestrate: {exc}")
        return EXIT_BAD_INPUT
    for note in judgement.notes:
        print_error(f"orchestrate: note: {note}")
    print_judgement(judgement)
    if judgement.posthoc:
        record_posthoc(tracker, judgement)
        with tempfile.TemporaryDirectory(prefix="orchestrate-report-") as scratch:
            write_report(tracker.uri, run_id, Path(scratch))  # keeps the logged report/ in step
        print(
            f"POST-HOC: stored as verdicts_posthoc.json and tag orchestrate.posthoc=true on run {run_id}; "
            "the registered verdicts are unchanged"
        )
    return verdict_exit_code(args.fail_on, [v.verdict for v in judgement.verdicts])


def print_judgement(judgement: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from orchestrator.cli.verdict_table import STYLE, console

    out = console()
    if judgement.posthoc:
        out.print(
            "[bold red]POST-HOC[/]: these claims differ from the ones registered before the run; they were chosen "
            "after the data were seen, so their error rates are NOT controlled."
        )
    claims = f"post-hoc claims from {judgement.spec_file}" if judgement.posthoc else "registered claims"
    title = f"verdicts of run {judgement.run_id} ({claims})"
    table = Table(title=title, title_justify="left")
    for column in ("claim", "verdict", "estimate", "bounds", "level", "method", "adjusted p"):
        table.add_column(column)
    for verdict in judgement.verdicts:
        row = verdict.to_row()
        style = STYLE.get(verdict.verdict, "white")
        table.add_row(
            row["claim"],
            f"[{style}]{row['verdict']}[/]",
            row["estimate"],
            row["bounds"],
            row["confidence"],
            row["method"],
            row["p"],
        )
    out.print(table)
    for verdict in judgement.verdicts:
        out.print(f"  {verdict.claim}: {escape(verdict.reason)}")  # a failed run's error may hold '[/...]'
    if not judgement.verdicts:
        out.print("no claims to judge")
    if not judgement.posthoc:
        if judgement.reproduces_logged():
            out.print(f"reproduces the {len(judgement.logged)} verdicts logged at run time (verdicts.json)")
        else:
            out.print(
                "[bold yellow]differs from the verdicts logged at run time (verdicts.json)[/]: "
                "were confirmation runs changed or deleted?"
            )
