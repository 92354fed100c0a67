"""``orchestrate compare`` and ``orchestrate history``: a store's hypothesis runs side by side.

``cli.main`` registers them with ``add_compare_commands(sub)``. ``compare A B`` prints
Markdown (rendered by rich on a terminal, as it is into a pipe or a file) and with
``--html`` also writes a page; ``history`` prints one table. Exit codes: 0 done, 2 a
name or run that the store does not hold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from orchestrator.cli.commands import URI_HELP
from orchestrator.cli.main import EXIT_BAD_INPUT, EXIT_OK, print_error

RUN_HELP = (
    "a hypothesis name (its newest FINISHED run), NAME@N (its N-th newest FINISHED run), "
    "or an MLflow run id (or its first 8 characters, as history shows them)"
)


def add_compare_commands(subparsers: Any) -> None:
    """Register ``compare`` and ``history`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "compare", help="two runs side by side: spec diff, claims changed, verdicts flipped, arm numbers"
    )
    p.add_argument("a", metavar="A", help=f"the earlier run: {RUN_HELP}")
    p.add_argument("b", metavar="B", help=f"the later run: {RUN_HELP}")
    p.add_argument("--tracking-uri", help=URI_HELP)
    p.add_argument("--html", metavar="PAGE", help="also write the comparison as one self-contained HTML page")
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser("history", help="every hypothesis run in the store, newest first, with its verdicts")
    p.add_argument("--tracking-uri", help=URI_HELP)
    p.set_defaults(func=cmd_history)


def cmd_compare(args: argparse.Namespace) -> int:
    from orchestrator.compare import compare_runs, resolve_target
    from orchestrator.compare.blocks import comparison_blocks
    from orchestrator.report import ReportError
    from orchestrator.report.render import to_html, to_markdown
    from orchestrator.tracking import Tracker, redact

    tracker = Tracker(args.tracking_uri)
    try:
        comparison = compare_runs(tracker, resolve_target(tracker, args.a), resolve_target(tracker, args.b))
    except ReportError as exc:
        print_error(f"orchestrate: {exc}")
        return EXIT_BAD_INPUT
    blocks = comparison_blocks(comparison)
    _print_markdown(redact(to_markdown(blocks)))
    if args.html:
        path = Path(args.html)
        path.parent.mkdir(parents=True, exist_ok=True)
        title = f"{comparison.a.label} -> {comparison.b.label}"
        path.write_text(redact(to_html(blocks, title, path.parent)))  # a comparison has no image
        print_error(f"orchestrate: wrote {path}")
    return EXIT_OK


def _print_markdown(text: str) -> None:
    """Rendered on a terminal; as Markdown into a pipe or a file, where it is read or pasted."""
    if not sys.stdout.isatty():
        print(text, end="", flush=True)
        return
    from rich.markdown import Markdown

    from orchestrator.cli.verdict_table import console

    console().print(Markdown(text))


def cmd_history(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from orchestrator.cli.verdict_table import console
    from orchestrator.compare import hypothesis_runs
    from orchestrator.compare.history import history_rows, lineages
    from orchestrator.tracking import Tracker, display_uri

    tracker = Tracker(args.tracking_uri)
    runs = hypothesis_runs(tracker)
    out = console()
    if not runs:
        out.print(f"no hypothesis run in {escape(display_uri(tracker.uri))}")
        return EXIT_OK
    table = Table(title=f"hypothesis runs in {escape(display_uri(tracker.uri))}, newest first", title_justify="left")
    for column in ("hypothesis", "run id", "profile", "status", "started", "wall time", "S/R/I", "refines"):
        table.add_column(column)
    for row in history_rows(runs):
        cells = (row.hypothesis, row.run_id, row.profile, row.status, row.started, row.wall, row.verdicts, row.refines)
        table.add_row(*map(escape, cells))
    out.print(table)
    out.print("S/R/I: registered claims SUPPORTED / REFUTED / INCONCLUSIVE ('-': not judged)")
    for chain in lineages(runs):
        out.print(escape("lineage: " + " -> ".join(chain)))
    return EXIT_OK
