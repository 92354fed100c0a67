"""The hypothesis report: MLflow -> ``report.md`` + self-contained ``report.html`` + PNGs.

    >>> from orchestrator.report import write_report
    >>> write_report("sqlite:///mlflow.db", parent_run_id, Path("reports/x"))   # doctest: +SKIP
    PosixPath('reports/x/report.md')

Stages: ``collect`` (MLflow -> ``RunSummary``), ``plots`` (figures), ``diagnostics``
(per arm: hyperparameter importances and Optuna's slice, contour and parallel-coordinate
figures), ``sections`` (blocks with every number and where it comes from), ``render``
(Markdown and HTML). The same files are logged under ``report/`` on the hypothesis run,
and each arm's diagnostics under ``diagnostics/`` on the arm's run.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import StoreError
from orchestrator.report.collect import (
    ReportError,
    RunSummary,
    collect_summary,
    download_artifact,
    resolve_hypothesis_run,
)

if TYPE_CHECKING:
    from orchestrator.report.diagnostics import ArmDiagnostics
    from orchestrator.report.sections import RunImage

__all__ = ["ReportError", "RunSummary", "collect_summary", "default_out_dir", "resolve_hypothesis_run", "write_report"]

MAX_RUN_IMAGES = 40
MAX_IMAGE_BYTES = 3_000_000
REPORT_FILES = ("report.md", "report.html")


def default_out_dir(summary_or_name: RunSummary | str, run_id: str | None = None) -> Path:
    if isinstance(summary_or_name, RunSummary):
        return Path("reports") / f"{summary_or_name.hypothesis}-{summary_or_name.run_id[:8]}"
    return Path("reports") / f"{summary_or_name}-{(run_id or '')[:8]}"


def write_report(
    tracking_uri: str | None, parent_run_id: str, out_dir: Path | str | None = None, log: bool = True
) -> Path:
    """Write ``report.md``, ``report.html`` and their PNGs into ``out_dir`` (default
    ``reports/<hypothesis>-<run id>``), log them under ``report/`` on the hypothesis
    run (unless ``log=False``), and return the path of ``report.md``."""
    from orchestrator.report.diagnostics import diagnose_run
    from orchestrator.report.plots import make_plots
    from orchestrator.report.render import to_html, to_markdown
    from orchestrator.report.sections import build_blocks
    from orchestrator.tracking import Tracker, redact

    tracker = Tracker(tracking_uri)
    summary = collect_summary(tracker, parent_run_id)
    folder = Path(out_dir) if out_dir is not None else default_out_dir(summary)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("figures", "artifacts", "diagnostics"):  # only folders this function owns
        shutil.rmtree(folder / stale, ignore_errors=True)
    plots = make_plots(summary, folder / "figures")
    diagnostics = diagnose_run(summary, folder / "diagnostics")
    images, left_out = _fetch_run_images(tracker, summary, folder)
    blocks = build_blocks(summary, plots, folder, images, left_out, diagnostics)
    # like every text the tool logs, the report never carries a secret environment value
    (folder / "report.md").write_text(redact(to_markdown(blocks)))
    (folder / "report.html").write_text(redact(to_html(blocks, f"{summary.hypothesis} report", folder)))
    if log:
        try:
            _log(tracker, parent_run_id, folder)
            _log_diagnostics(tracker, summary, diagnostics, folder / "diagnostics")
        except StoreError as exc:  # e.g. a read-only user of a server: the local report is there all the same
            raise StoreError(f"{exc}; the report itself was written to {folder / 'report.md'}") from exc
    return folder / "report.md"


def _fetch_run_images(tracker, summary: RunSummary, folder: Path) -> tuple[list[RunImage], list[str]]:
    """Copy the runs' PNGs next to the report: per arm the arm run's, the confirmation
    runs', the selected trial's, then the other trials', up to ``MAX_RUN_IMAGES`` (the
    rest are listed by path)."""
    from orchestrator.report.sections import RunImage

    ordered: list[tuple[str, str, str, str, str]] = []  # (arm, run id, where, folder label, artifact)
    for arm in summary.arms:
        ordered += [(arm.arm, arm.run_id, "arm run", "arm", artifact) for artifact in arm.images]
        best = arm.best_trial()
        for run in [*arm.confirms, *([best] if best else []), *(t for t in arm.trials if t is not best)]:
            where = f"confirmation run seed {run.seed}" if run.kind == "confirm" else f"trial run {run.name}"
            label = f"seed{run.seed}" if run.kind == "confirm" else f"trial-{run.run_id[:8]}"
            ordered += [(arm.arm, run.run_id, where, label, artifact) for artifact in run.images]
    images: list[RunImage] = []
    left_out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="orchestrate-report-") as scratch:
        for arm_name, run_id, where, label, artifact in ordered:
            if len(images) >= MAX_RUN_IMAGES:
                left_out.append(f"{run_id}/{artifact}")
                continue
            local = download_artifact(tracker, run_id, artifact, Path(scratch) / run_id)
            if local.stat().st_size > MAX_IMAGE_BYTES:
                left_out.append(f"{run_id}/{artifact}")
                continue
            target = Path("artifacts") / arm_name / label / artifact
            (folder / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, folder / target)
            images.append(RunImage(arm_name, run_id, where, artifact, target))
    return images, left_out


def _log(tracker, run_id: str, folder: Path) -> None:
    """Only the report's own files, never whatever else ``--out`` holds."""
    with tempfile.TemporaryDirectory(prefix="orchestrate-report-") as scratch:
        staging = Path(scratch)
        for name in REPORT_FILES:
            shutil.copyfile(folder / name, staging / name)
        for sub in ("figures", "artifacts", "diagnostics"):
            if (folder / sub).exists():
                shutil.copytree(folder / sub, staging / sub)
        tracker.log_artifacts(run_id, staging, "report")


def _log_diagnostics(tracker, summary: RunSummary, diagnostics: list[ArmDiagnostics], folder: Path) -> None:
    """Each arm's ``importance.json`` and figures under ``diagnostics/`` on the arm's own
    run, where MLflow's UI shows them next to the arm's search."""
    for arm, found in zip(summary.arms, diagnostics, strict=True):
        tracker.log_artifacts(arm.run_id, folder / found.arm, "diagnostics")
