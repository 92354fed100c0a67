"""``orchestrate``: the command line. Parses arguments, calls one stage, prints.

Exit codes: 0 done (whatever the verdicts, unless ``--fail-on``), 1 a run that
could not finish (every trial failed, a model that cannot load...), 2 bad input
(``FILE:LINE: field: message`` on stderr, nothing started).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def print_error(text: str) -> None:
    """One line on stderr, flushed at once (every command's messages go through here)."""
    print(text, file=sys.stderr, flush=True)


def verdict_exit_code(fail_on: str | None, verdicts: list[str]) -> int:
    """The exit code of a command that judged (``run``, ``judge``): 0 whatever the verdicts;
    ``--fail-on refuted``: 1 if any is REFUTED; ``--fail-on inconclusive``: 1 if any is not SUPPORTED."""
    if fail_on == "refuted" and "REFUTED" in verdicts:
        return EXIT_FAILED
    if fail_on == "inconclusive" and any(v != "SUPPORTED" for v in verdicts):
        return EXIT_FAILED
    return EXIT_OK


def _load(path: str, profile: str | None):
    from orchestrator.spec.loader import load_hypothesis

    return load_hypothesis(path, profile)


def cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator.spec.errors import SpecError

    status = EXIT_OK
    for path in args.files:
        try:
            _load(path, None)
            print(f"{path}: ok")
        except SpecError as exc:
            print_error(str(exc))
            status = EXIT_BAD_INPUT
    return status


def cmd_plan(args: argparse.Namespace) -> int:
    from orchestrator.plan import make_plan

    plan = make_plan(_load(args.file, args.profile))
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2, default=str))
        return EXIT_OK
    from orchestrator.cli.verdict_table import console

    task, training, search = plan.task, plan.training, plan.search
    out = console()
    out.print(f"[bold]{plan.name}[/] profile={plan.profile}  spec sha256 {plan.spec_sha256[:12]}")
    if plan.refines:
        out.print(f"refines: {plan.refines}")
    from orchestrator.tasks.types import get_task_type

    length = f"max_length {task.max_length}, " if "max_length" in get_task_type(task.type).own_fields else ""
    out.print(f"task: {task.type} {task.model} on {task.dataset} ({length}metric {task.metric})")
    out.print(
        f"training: {training.epochs} epochs, batch {training.batch_size}, lr {training.lr}, "
        f"precision {training.precision}"
    )
    for arm in plan.arms:
        routed = " (routed)" if arm.routed else ""
        out.print(f"\n[bold]arm {arm.arm}[/]: method {arm.method}{routed}, space {arm.space_file or '-'}")
        for name, spec in arm.space().searched().items():
            out.print(f"    search {name}: {_range(spec)}")
        for name, value in arm.fixed.items():
            out.print(f"    fixed  {name} = {value}")
        if arm.points_to_evaluate:
            out.print(f"    first point (paper defaults): {arm.points_to_evaluate[0]}")
        objectives = ", ".join(f"{k} {v}" for k, v in arm.objectives.items())
        out.print(f"    sampler {arm.sampler.describe()}; objectives {objectives}")
        out.print(f"    constraints {', '.join(map(str, arm.constraints)) or 'none'}; scheduler {arm.scheduler}")
        resources = ", ".join(f"{k}={v}" for k, v in search.resources.model_dump(exclude_none=True).items() if v)
        retries = f"{search.max_retries} {'retry' if search.max_retries == 1 else 'retries'}"
        out.print(
            f"    {arm.trials} trials, {search.max_concurrent} at a time, each with {resources}; "
            f"up to {retries} if its worker is lost"
        )
    limits = [
        f"{search.trial_timeout_s:g} s" if search.trial_timeout_s else "",
        f"{search.trial_memory_mb:g} MB" if search.trial_memory_mb else "",
    ]
    reused = "reused" if search.reuse_trials else "not reused"
    out.print(
        f"\nper-trial limits: {' and '.join(x for x in limits if x) or 'none'}; "
        f"finished trials of earlier runs {reused}"
    )
    rounds = plan.confirm.rounds
    out.print(
        f"\nconfirm: best config per arm x {plan.confirm.seeds} fresh seeds on the {plan.confirm.split} split"
        + (
            ""
            if len(rounds) == 1
            else f", then rounds of seeds for the arms of claims still open, up to "
            f"{sum(map(len, rounds))} (seeds by round: {rounds}; docs/claims.md, sequential confirmation)"
        )
    )
    for claim in plan.judge.claims:
        out.print(f"expected: {claim}")
    return EXIT_OK


def _range(spec) -> str:
    if spec.type == "categorical":
        return "{" + ",".join(map(str, spec.choices)) + "}"
    scale = " log" if spec.log else ""
    return f"[{spec.low:g},{spec.high:g}{scale}]" + (
        " when " + ",".join(f"{k}={v}" for k, v in spec.when.items()) if spec.when else ""
    )


def cmd_methods(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from methods import available_methods, get_method

    console = Console()
    for name in available_methods():
        try:
            cls = get_method(name)
        except Exception as exc:  # a broken optional dependency must not hide the others
            console.print(f"[red]{name}[/]: unavailable ({exc})")
            continue
        table = Table(title=f"{name}{' (routed)' if cls.routed else ''}: {cls.summary}", title_justify="left")
        for column in ("hyperparameter", "default", "meaning"):
            table.add_column(column)
        for field_name, field in cls.Config.model_fields.items():
            table.add_row(
                escape(field_name),
                escape(repr(field.get_default(call_default_factory=True))),
                escape(field.description or ""),
            )
        console.print(table)
        if cls.metrics:  # what claims may name besides every run's metrics (orchestrator.metrics)
            metrics = Table(title=f"{name}: its own metrics", title_justify="left")
            for column in ("metric", "meaning"):
                metrics.add_column(column)
            for metric, meaning in cls.metrics.items():
                metrics.add_row(escape(metric), escape(meaning))
            console.print(metrics)
        needs = [f"{r.module} ({r.install_command})" for r in getattr(cls, "requires", ())]
        if needs:
            console.print(escape(f"{name} needs: " + ", ".join(needs)))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.execute.ray_session import prepare_ray_environment

    prepare_ray_environment(args.address)  # before anything imports ray
    from orchestrator.plan import make_plan

    loaded = _load(args.file, args.profile)
    plan = make_plan(loaded)  # bad input stops here: no Ray, no MLflow
    if not args.address:
        from orchestrator.trial.precision import emulated_bf16_warnings

        for warning in emulated_bf16_warnings(loaded.hypothesis):  # local trials run on this CPU
            print_error(f"orchestrate: warning: {warning}")
    from orchestrator.execute.runner import AllTrialsFailedError, RunOptions
    from orchestrator.pipeline import run_hypothesis
    from orchestrator.tasks.datasets import DatasetUnavailableError
    from orchestrator.tasks.models import ModelUnavailableError

    options = RunOptions(
        tracking_uri=args.tracking_uri,
        address=args.address,
        storage_path=args.storage_path,
        state_dir=Path(args.state_dir),
        fresh=args.fresh,
        quiet=args.quiet,
        verbose=args.verbose,
    )
    try:
        outcome = run_hypothesis(plan, options)
    except (AllTrialsFailedError, ModelUnavailableError, DatasetUnavailableError) as exc:
        print_error(f"orchestrate: {exc}")
        return EXIT_FAILED
    from orchestrator.cli.verdict_table import print_verdicts

    print_verdicts(outcome)
    if outcome.report_path is not None:
        print(f"report: {outcome.report_path} (also logged to MLflow under report/)")
    return verdict_exit_code(args.fail_on, [v.verdict for v in outcome.verdicts])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrate", description="Hypothesis-driven AutoML for parameter-efficient fine-tuning."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check hypothesis files; exit 2 with FILE:LINE: field: message on errors")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", help="print the compiled searches without running anything")
    p.add_argument("file")
    p.add_argument("--profile")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="search, confirm and judge a hypothesis")
    p.add_argument("file")
    p.add_argument("--profile", help="a profile of the file (smoke, paper, ...); default: the file as written")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a local Ray on 127.0.0.1)")
    p.add_argument("--storage-path", help="where Ray keeps checkpoints (shared FS or s3:// on a cluster)")
    p.add_argument("--state-dir", default=".orchestrate", help="resume state, caches and local Ray storage")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming an interrupted run")
    p.add_argument("--quiet", action="store_true", help="no live table nor progress lines; warnings still print")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's own warnings on stderr too (default: into <state-dir>/logs/, named in the first line)",
    )
    p.add_argument("--fail-on", choices=["refuted", "inconclusive"], help="non-zero exit for these verdicts (CI use)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("methods", help="list every method with its hyperparameters and defaults")
    p.set_defaults(func=cmd_methods)

    from orchestrator.cli.commands import add_report_commands

    add_report_commands(sub)  # report, judge
    from orchestrator.cli.compare import add_compare_commands

    add_compare_commands(sub)  # compare, history
    from orchestrator.cli.ui import add_ui_command

    add_ui_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from orchestrator.errors import InputError
    from orchestrator.spec.errors import SpecError

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as exc:
        print_error(str(exc))
        return EXIT_BAD_INPUT
    except InputError as exc:  # a data file, damaged state, an unusable store, a run already going
        print_error(f"orchestrate: {exc}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print_error("orchestrate: interrupted; run the same command again to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
