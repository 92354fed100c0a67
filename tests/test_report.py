"""The report: Pareto front, figures and rendering on synthetic summaries (fast), then
the session's shared real run (conftest.py) read back from MLflow into report.md /
report.html (slow)."""

from __future__ import annotations

import base64
import re
import struct
from pathlib import Path

import pytest

from helpers import private_copy
from orchestrator.report.collect import ArmSummary, RunRecord, RunSummary
from orchestrator.report.plots import best_so_far, make_plots, pareto_front
from orchestrator.report.render import Alert, Heading, Image, Para, Table, inline, to_html, to_markdown
from orchestrator.report.sections import build_blocks

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- helpers shared with test_rejudge.py ---------------------------------------------------
def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (and proof that it is a PNG)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def orchestrate(argv: list[str]) -> int:
    """``orchestrate ARGV`` in-process."""
    from orchestrator.cli import main

    return main(argv)


# -- synthetic summaries --------------------------------------------------------------------
def _record(
    arm: str, kind: str, n: int, metrics: dict, status: str = "COMPLETED", seed: int | None = None
) -> RunRecord:
    return RunRecord(
        f"{arm}{kind}{n:02d}".ljust(32, "0"), f"{arm} #{n}", arm, kind, status, {"r": "4"}, metrics, seed, n
    )


def synthetic_summary() -> RunSummary:
    from orchestrator.judge import judge_claims
    from orchestrator.judge.evidence import exact_metrics_of

    arms = []
    for index, (arm, ratio) in enumerate((("routed", 0.2), ("lora", 1.0))):
        trials = [
            _record(
                arm,
                "trial",
                i,
                {"val_accuracy": 0.70 + 0.03 * ((i * (index + 3)) % 5), "flops_ratio": ratio + 0.01 * i},
            )
            for i in range(1, 7)
        ]
        trials.append(_record(arm, "trial", 7, {}, status="FAILED"))
        trials.append(_record(arm, "trial", 8, {"val_accuracy": 0.6, "flops_ratio": ratio}, status="STOPPED"))
        confirms = [
            _record(
                arm,
                "confirm",
                s,
                {"test_accuracy": 0.80 + 0.01 * s - 0.02 * index, "flops_ratio": ratio},
                seed=1000 + s,
            )
            for s in range(4)
        ]
        for confirm in confirms:  # the routed arm forced bf16 on a CPU that emulates it
            confirm.params |= (
                {"precision": "bf16", "precision_native": "false"}
                if arm == "routed"
                else {"precision": "fp32", "precision_native": "true"}
            )
        counts = {"COMPLETED": 6, "FAILED": 1, "STOPPED": 1, "INFEASIBLE": 0}
        best = max(trials[:6], key=lambda t: t.metrics["val_accuracy"])
        arms.append(
            ArmSummary(
                arm,
                "lora",
                f"arm{arm}".ljust(32, "0"),
                best.run_id,
                "best val_accuracy (max)",
                {"r": "4", "lr": "0.001"},
                {"r": "4"},
                counts,
                trials,
                confirms,
            )
        )
    claims = ["routed.test_accuracy >= lora.test_accuracy - 0.01", "routed.flops_ratio <= 25%"]
    samples = {
        a.arm: {m: {c.seed: c.metrics[m] for c in a.confirms} for m in ("test_accuracy", "flops_ratio")} for a in arms
    }
    plan = {
        "task": {"metric": "accuracy", "model": "random:bert-tiny", "dataset": "synthetic:polarity"},
        "judge": {"confidence": 0.95, "family_wise": None},
        "confirm": {"split": "test", "seeds": 4, "first_seed": 1000},
        "arms": [
            {"arm": a.arm, "objectives": {"val_accuracy": "max"}, "sampler": {"name": "tpe"}, "trials": 8}
            for a in arms
        ],
    }
    return RunSummary(
        "f" * 32,
        "1",
        "synthetic",
        "FINISHED",
        "Routing matches LoRA at a fifth of the FLOPs.",
        "a paper",
        "h.yaml",
        "0" * 64,
        "default",
        "abc",
        "sqlite:///x.db",
        plan,
        claims,
        arms,
        judge_claims(claims, samples, exact_metrics=exact_metrics_of({a.arm: a.method for a in arms})),
    )


def test_pareto_front_keeps_only_non_dominated_points_in_cost_order():
    points = [(1.0, 0.80), (0.2, 0.70), (0.5, 0.70), (0.5, 0.85), (0.3, 0.60), (2.0, 0.85)]
    assert pareto_front(points) == [1, 3]  # (0.2, .70) then (0.5, .85); (2.0, .85) costs more for the same score


def test_pareto_front_minimising_the_score_and_skipping_nan():
    points = [(1.0, 0.3), (0.5, 0.5), (2.0, 0.1), (0.1, float("nan"))]
    assert pareto_front(points, maximize=False) == [1, 0, 2]


def test_pareto_front_keeps_exact_duplicates_of_a_front_point():
    assert pareto_front([(0.25, 0.4), (0.25, 0.4), (1.0, 0.4)]) == [0, 1]


def test_best_so_far_ignores_failed_trials():
    assert best_so_far([0.5, float("nan"), 0.4, 0.7]) == [0.5, 0.5, 0.5, 0.7]
    assert best_so_far([3.0, 2.0, 4.0], maximize=False) == [3.0, 2.0, 2.0]


def test_plots_are_valid_pngs_of_a_readable_size(tmp_path):
    plots = make_plots(synthetic_summary(), tmp_path)
    assert [p.path.name for p in plots] == ["pareto.png", "history.png", "confirmation.png"]
    for plot in plots:
        width, height = png_size(plot.path)
        assert width >= 600 and height >= 400 and plot.path.stat().st_size > 10_000
        assert plot.caption


def test_plots_are_skipped_when_no_trial_has_the_metrics(tmp_path):
    summary = synthetic_summary()
    for arm in summary.arms:
        for run in arm.trials + arm.confirms:
            run.metrics = {}
    assert make_plots(summary, tmp_path) == []


def test_html_is_self_contained_and_escapes_text(tmp_path):
    png = tmp_path / "a.png"
    png.write_bytes(PNG_SIGNATURE + b"rest")
    blocks = [
        Heading("T <1>", 1),
        Para("x `a<b` **bold**"),
        Alert("loud"),
        Table(["h"], [["SUPPORTED"]]),
        Image(Path("a.png"), "t", "c"),
    ]
    page = to_html(blocks, "title", tmp_path)
    assert "T &lt;1&gt;" in page and "<code>a&lt;b</code>" in page and "<strong>bold</strong>" in page
    assert 'class="supported"' in page and 'class="alert"' in page
    assert f"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page) and "<link" not in page and "<script" not in page


def test_inline_code_is_not_bolded():
    assert inline("`**x**` and **y**") == "<code>**x**</code> and <strong>y</strong>"


def test_markdown_of_a_synthetic_summary_has_every_section(tmp_path):
    summary = synthetic_summary()
    blocks = build_blocks(summary, make_plots(summary, tmp_path / "figures"), tmp_path, [], [])
    text = to_markdown(blocks)
    for heading in ("## Where each number comes from", "## Verdicts (pre-registered claims)", "## Arms", "## Figures"):
        assert heading in text
    assert "UNMERGED LoRA r=8" in text and "merged LoRA adds 0 FLOPs" in text
    assert "SUPPORTED" in text and "one-sided" in text and "POST-HOC" not in text
    assert "![Pareto front: validation score vs FLOPs](figures/pareto.png)" in text
    assert "6 / 1 / 1 / 0" in text  # trials completed / failed / stopped / infeasible
    assert "| bf16 (emulated) |" in text and "| fp32 |" in text  # the precision each arm's confirmation runs used


def test_the_claim_detail_names_a_failed_confirmation_seed_and_its_error(tmp_path):
    from orchestrator.judge import judge_claims
    from orchestrator.judge.rejudge import exact_metrics_from_summary, failures_from_summary, samples_from_summary

    summary = synthetic_summary()
    failed = summary.arm("lora").confirms[2]
    failed.status, failed.error, failed.metrics = (
        "FAILED",
        "NonFiniteLossError: non-finite loss (nan) at step 3 | epoch 0",
        {},
    )
    summary.verdicts = judge_claims(
        summary.claims,
        samples_from_summary(summary),
        exact_metrics=exact_metrics_from_summary(summary),
        failed=failures_from_summary(summary),
    )
    text = to_markdown(build_blocks(summary, [], tmp_path, [], []))
    claim = _section(text, "### Claim 1")
    assert (
        "INCONCLUSIVE" in claim and "arm lora, seed 1002: its run failed (NonFiniteLossError: non-finite loss" in claim
    )
    assert (
        f"seed 1002 `{failed.run_id}` (FAILED: NonFiniteLossError: non-finite loss (nan) at step 3 | epoch 0)" in claim
    )
    assert (
        "1002: run failed: NonFiniteLossError: non-finite loss (nan) at step 3 \\| epoch 0" in claim
    )  # excluded column


def test_the_report_never_shows_tracking_credentials(tmp_path):
    summary = synthetic_summary()
    summary.tracking_uri = "postgresql://alice:s3cret-pw@db.example:5432/mlflow"
    text = to_markdown(build_blocks(summary, [], tmp_path, [], []))
    assert "postgresql://db.example:5432/mlflow" in text and "s3cret" not in text and "alice" not in text


def test_search_diagnostics_section_has_importances_and_figures_or_the_reason(tmp_path):
    from orchestrator.report.diagnostics import diagnose_run
    from test_diagnostics import PLAN, lr_decides

    summary = synthetic_summary()
    routed = summary.arm("routed")
    routed.trials, routed.fixed = lr_decides(), {"r": "8"}
    summary.plan["arms"][0] |= {"params": PLAN["params"], "fixed": PLAN["fixed"]}  # lora's plan has no space
    blocks = build_blocks(summary, [], tmp_path, [], [], diagnose_run(summary, tmp_path / "diagnostics"))
    section = _section(to_markdown(blocks), "## Search diagnostics")
    routed_part, lora_part = section.split("### lora")
    assert "30 completed trials weigh in" in routed_part
    assert "search space: from the plan logged with the run" in routed_part
    assert re.search(r"\| `lr` \| 0\.[5-9]\d* \| 1 \|", routed_part)
    for figure in ("slice", "contour", "parallel_coordinate"):
        assert f"](diagnostics/routed/{figure}.png)" in routed_part
    assert "No importances or figures: no logged parameter varied across the completed trials." in lora_part
    assert "![" not in lora_part
    assert to_html(blocks, "t", tmp_path).count("data:image/png;base64,") == 3


# -- one real run --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report(shared_run, tmp_path_factory):
    """A private copy of the shared run (arms small, large and flaky), a PNG 'heatmap' logged
    on one confirmation run and a 'Pareto front' on one arm run (as methods and
    multi-objective arms do), then ``orchestrate report``."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import Tracker

    with private_copy(shared_run, tmp_path_factory.mktemp("report-run")) as run:
        client = MlflowClient(run.uri)
        experiment = client.get_experiment_by_name("tiny-test")
        (parent,) = client.search_runs([experiment.experiment_id], "tags.`orchestrate.level` = 'hypothesis'")
        tracker = Tracker(run.uri)
        confirm = client.search_runs(
            [experiment.experiment_id], "tags.`orchestrate.level` = 'confirm' and tags.`orchestrate.arm` = 'small'"
        )[0]
        heatmap = run.folder / "heatmap"
        heatmap.mkdir()
        _heatmap(heatmap / "rank_heatmap.png")
        tracker.log_artifacts(confirm.info.run_id, heatmap)
        (heatmap / "rank_heatmap.png").rename(heatmap / "pareto_front.png")
        tracker.log_artifacts(confirm.data.tags["mlflow.parentRunId"], heatmap)
        out = run.folder / "report"
        code = orchestrate(["report", "tiny-test", "--out", str(out), "--tracking-uri", run.uri])
        yield {
            "code": run.exit_code,
            "uri": run.uri,
            "client": client,
            "run_id": parent.info.run_id,
            "report_code": code,
            "out": out,
            "md": (out / "report.md").read_text(),
            "confirm_id": confirm.info.run_id,
        }


def _heatmap(path: Path) -> None:
    """What a method's write_artifacts produces: a small matplotlib heatmap."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2), dpi=80)
    fig.subplots().imshow(np.arange(12).reshape(3, 4))
    fig.savefig(path)


def _section(md: str, heading: str) -> str:
    start = md.index(heading)
    end = md.find("\n## ", start + len(heading))
    return md[start:] if end < 0 else md[start:end]


@pytest.mark.slow
def test_report_command_writes_both_files(report):
    assert report["code"] == 0 and report["report_code"] == 0
    assert (report["out"] / "report.html").stat().st_size > 10_000


@pytest.mark.slow
def test_report_header_names_the_run(report):
    md = report["md"]
    assert md.startswith("# Hypothesis report: tiny-test")
    assert "a tiny hypothesis for tests" in md and f"`{report['run_id']}` (FINISHED)" in md
    assert re.search(r"sha256 `[0-9a-f]{64}`", md) and "| profile | default |" in md


@pytest.mark.slow
def test_report_verdicts_have_real_numbers_and_their_runs(report):
    verdicts = _section(report["md"], "## Verdicts")
    rows = [line for line in verdicts.splitlines() if re.match(r"\| [12] \|", line)]
    assert len(rows) == 2
    first = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert first[1] == "`small.flops_ratio <= large.flops_ratio / 2`" and first[2] == "SUPPORTED"
    assert float(first[3]) == pytest.approx(-0.25) and first[4] == "[-0.25, -0.25]"
    for field in (
        "**estimate**",
        "**interval**",
        "one-sided",
        "**method**",
        "**effect size**",
        "**what would settle it**",
        "**p-values**",
        "**Holm**",
    ):
        assert verdicts.count(field) >= 2, field
    confirm_ids = re.findall(r"seed 100[01] `([0-9a-f]{32})`", verdicts)
    assert report["confirm_id"] in confirm_ids and len(set(confirm_ids)) == 4


@pytest.mark.slow
def test_report_arm_table_has_numbers_for_both_arms(report):
    arms = _section(report["md"], "## Arms")
    rows = {
        cells[0]: cells
        for cells in (
            [c.strip() for c in line.strip("|").split("|")]
            for line in arms.splitlines()
            if line.startswith("| small") or line.startswith("| large")
        )
    }
    assert set(rows) == {"small", "large"}
    for arm, ratio in (("small", 0.25), ("large", 1.0)):
        cells = rows[arm]
        assert "r=" in cells[2] and 0.0 <= float(cells[3]) <= 1.0
        assert re.fullmatch(r"[0-9.]+( ± [0-9.e-]+)? \(n=2\)", cells[4])
        assert float(cells[5]) == pytest.approx(ratio) and int(cells[6]) > 0 and float(cells[7]) > 0
        assert cells[8] in (
            "fp32",
            "bf16",
        )  # the precision its confirmation runs used (auto: what this CPU runs natively)
        assert cells[9] == "3 / 0 / 0 / 0"  # the shared run: 3 trials per arm, all finished


@pytest.mark.slow
def test_report_says_where_numbers_come_from(report):
    md = report["md"]
    assert "**search = validation split**" in md and "**confirmation = test split**" in md
    assert "relative to an **UNMERGED LoRA r=8**" in md and "A merged LoRA adds 0 FLOPs" in md


@pytest.mark.slow
def test_report_figures_are_valid_pngs(report):
    paths = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report["md"])
    assert {"figures/pareto.png", "figures/history.png", "figures/confirmation.png"} <= set(paths)
    assert any(p.endswith("/rank_heatmap.png") for p in paths) and any(
        p.endswith("arm/pareto_front.png") for p in paths
    )
    for path in paths:
        width, height = png_size(report["out"] / path)
        assert width > 10 and height > 10


@pytest.mark.slow
def test_report_html_inlines_every_image_and_references_nothing_outside(report):
    page = (report["out"] / "report.html").read_text()
    images = re.findall(r"<img [^>]*src=\"([^\"]+)\"", page)
    assert len(images) == len(re.findall(r"!\[", report["md"])) >= 5
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", page)
    assert "<link" not in page and "<script" not in page and "@import" not in page


@pytest.mark.slow
def test_report_is_logged_on_the_hypothesis_run(report):
    client = report["client"]
    logged = {a.path for a in client.list_artifacts(report["run_id"], "report")}
    assert {"report/report.md", "report/report.html", "report/figures"} <= logged
    figures = {a.path for a in client.list_artifacts(report["run_id"], "report/figures")}
    assert figures == {"report/figures/pareto.png", "report/figures/history.png", "report/figures/confirmation.png"}


@pytest.mark.slow
def test_report_has_search_diagnostics_per_arm_and_logs_them_on_the_arm_runs(report):
    section = _section(report["md"], "## Search diagnostics")
    parts = {part.split("\n", 1)[0]: part for part in section.split("\n### ")[1:]}
    assert set(parts) == {"small", "large", "flaky"}
    for arm in ("small", "large"):  # 3 trials each, 3 searched parameters (r is fixed)
        assert "No importances or figures: 3 trial(s) to compare; importances need at least 4." in parts[arm]
    assert "one searched parameter (`mode`)" in parts["flaky"]
    client = report["client"]
    experiment_id = client.get_run(report["run_id"]).info.experiment_id
    arm_runs = client.search_runs([experiment_id], "tags.`orchestrate.level` = 'arm'")
    for arm_run in arm_runs:
        logged = [a.path for a in client.list_artifacts(arm_run.info.run_id, "diagnostics")]
        assert logged == ["diagnostics/importance.json"], arm_run.data.tags["orchestrate.arm"]


@pytest.mark.slow
def test_the_search_trials_per_epoch_values_come_back_from_the_store(report):
    """What the diagnostics fall back on when too few trials completed (``shared_epoch``)."""
    from orchestrator.report.collect import collect_summary
    from orchestrator.tracking import Tracker

    summary = collect_summary(Tracker(report["uri"]), report["run_id"], with_images=False)
    trained = [t for arm in summary.arms for t in arm.trials if t.status in ("COMPLETED", "STOPPED")]
    assert trained
    for trial in trained:
        assert sorted(trial.history) == list(range(1, len(trial.history) + 1)), trial.name
        assert all(0.0 <= value <= 1.0 for value in trial.history.values())  # val_accuracy
    quick = collect_summary(Tracker(report["uri"]), report["run_id"], with_images=False, with_history=False)
    assert all(not t.history for arm in quick.arms for t in arm.trials)


@pytest.mark.slow
def test_report_by_run_id_equals_report_by_name(report, tmp_path):
    assert orchestrate(["report", report["run_id"], "--out", str(tmp_path), "--tracking-uri", report["uri"]]) == 0
    assert (tmp_path / "report.md").read_text() == report["md"]


@pytest.mark.slow
def test_report_of_an_unknown_hypothesis_exits_2(report, tmp_path, capsys):
    assert orchestrate(["report", "no-such-hypothesis", "--out", str(tmp_path), "--tracking-uri", report["uri"]]) == 2
    assert "no hypothesis" in capsys.readouterr().err
