"""``orchestrate``, the command line: one module per group of commands.

``main`` parses arguments and runs ``validate``, ``plan``, ``methods`` and ``run``;
``commands`` adds ``judge`` and ``report`` (which read a finished run back from MLflow);
``compare`` adds ``compare`` (two runs side by side) and ``history`` (a store's runs and their
lineage); ``ui`` starts the MLflow UI on a run's store; ``verdict_table`` prints verdicts with rich.
Every command reports bad input as one ``FILE:LINE: field: message`` line and exit 2.
"""

from orchestrator.cli.main import EXIT_BAD_INPUT, EXIT_OK, main, print_error, verdict_exit_code

__all__ = ["EXIT_BAD_INPUT", "EXIT_OK", "main", "print_error", "verdict_exit_code"]
