"""Search diagnostics (orchestrator/report/diagnostics.py): an arm's trials -> Optuna
importances and figures, checked on a search whose objective only the learning rate decides."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from orchestrator.report.collect import ArmSummary, RunRecord
from orchestrator.report.diagnostics import (
    EVALUATOR,
    INFERRED,
    ArmDiagnostics,
    build_study,
    diagnose,
    search_table,
    shared_epoch,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: the arm's entry of plan.json as ArmPlan.to_dict writes it: a log-scaled float, a
#: categorical, a stepped float, an int, and a fixed parameter that is not searched
PLAN = {
    "arm": "lora",
    "objectives": {"val_accuracy": "max", "flops_ratio": "min"},
    "fixed": {"r": 8},
    "params": {
        "r": {"type": "categorical", "choices": [2, 4, 8, 16]},
        "lr": {"type": "float", "low": 1e-4, "high": 5e-3, "log": True},
        "lora_alpha": {"type": "categorical", "choices": [8, 16, 32]},
        "lora_dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.05},
        "warmup_steps": {"type": "int", "low": 0, "high": 50},
    },
}


def _trial(n: int, params: dict[str, object], metrics: dict[str, float], status: str = "COMPLETED") -> RunRecord:
    logged = {k: str(v) for k, v in params.items()} | {"r": "8", "seed": "0", "precision": "fp32"}
    return RunRecord(f"{n:032x}", f"lora #{n}", "lora", "trial", status, logged, metrics, 0, n)


def _arm(trials: list[RunRecord]) -> ArmSummary:
    counts = {s: sum(t.status == s for t in trials) for s in ("COMPLETED", "FAILED", "STOPPED", "INFEASIBLE")}
    return ArmSummary("lora", "lora", "a" * 32, None, "", {}, {"r": "8"}, counts, trials, [])


def lr_decides(count: int = 30, seed: int = 7) -> list[RunRecord]:
    """``count`` trials whose val_accuracy is a smooth function of log(lr) plus tiny noise;
    the three other parameters are drawn at random and do nothing."""
    rng = random.Random(seed)
    trials = []
    for n in range(count):
        lr = math.exp(rng.uniform(math.log(1e-4), math.log(5e-3)))
        params = {
            "lr": lr,
            "lora_alpha": rng.choice([8, 16, 32]),
            "lora_dropout": rng.choice([0.0, 0.05, 0.1, 0.15, 0.2]),
            "warmup_steps": rng.randint(0, 50),
        }
        accuracy = 0.9 - 0.08 * (math.log10(lr) - math.log10(1e-3)) ** 2 + rng.gauss(0, 0.002)
        trials.append(_trial(n, params, {"val_accuracy": accuracy, "flops_ratio": 1.0}))
    return trials


@pytest.fixture(scope="module")
def lr_search(tmp_path_factory) -> tuple[ArmDiagnostics, Path]:
    """The 30-trial search diagnosed once (each diagnosis fits a forest and draws three figures)."""
    folder = tmp_path_factory.mktemp("lr-search")
    return diagnose(search_table(_arm(lr_decides()), PLAN), folder), folder


def test_the_parameter_that_decides_the_objective_carries_most_of_the_importance(lr_search):
    found, _ = lr_search
    assert found.reason is None and found.completed == 30
    assert [p.rank for p in found.importances] == [1, 2, 3, 4]
    first = found.importances[0]
    assert first.name == "lr" and first.importance > 0.5
    assert sum(p.importance for p in found.importances) == pytest.approx(1.0)
    assert {p.name for p in found.importances} == {"lr", "lora_alpha", "lora_dropout", "warmup_steps"}  # r is fixed


def test_the_three_figures_are_non_empty_pngs(lr_search):
    found, _ = lr_search
    assert [p.path.name for p in found.plots] == ["slice.png", "contour.png", "parallel_coordinate.png"]
    for plot in found.plots:
        data = plot.path.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 10_000 and plot.caption
    assert "lr" in found.plots[1].caption  # the contour is drawn over the two most important parameters


def test_importance_json_holds_what_the_report_shows(lr_search):
    found, folder = lr_search
    logged = json.loads((folder / "importance.json").read_text())
    assert logged["objective"] == "val_accuracy" and logged["mode"] == "max" and logged["evaluator"] == EVALUATOR
    assert logged["importances"] == {p.name: p.importance for p in found.importances}
    assert logged["figures"] == ["slice.png", "contour.png", "parallel_coordinate.png"]


def test_the_same_trials_give_the_same_importances(lr_search, tmp_path):
    again = diagnose(search_table(_arm(lr_decides()), PLAN), tmp_path)
    assert again.importances == lr_search[0].importances


def test_an_arm_with_two_trials_gets_a_reason_not_figures(tmp_path):
    found = diagnose(search_table(_arm(lr_decides(2)), PLAN), tmp_path)
    assert found.reason == "2 trial(s) to compare; importances need at least 4"
    assert found.importances == [] and found.plots == [] and not list(tmp_path.glob("*.png"))


def test_one_searched_parameter_gets_a_reason(tmp_path):
    plan = {**PLAN, "fixed": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "warmup_steps": 0}}
    found = diagnose(search_table(_arm(lr_decides()), plan), tmp_path)
    assert found.reason is not None and "one searched parameter (`lr`)" in found.reason and found.plots == []


def test_failed_stopped_and_infeasible_trials_do_not_weigh_in():
    trials = lr_decides(8)
    trials[1].status, trials[1].metrics = "FAILED", {}
    trials[2].status = "STOPPED"
    trials[3].status = "INFEASIBLE"
    trials[4].metrics = {"val_accuracy": float("nan")}
    trials[5].params["lora_alpha"] = "64"  # not a choice of the space
    study, left_out = build_study(search_table(_arm(trials), PLAN))
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "PRUNED", "FAIL", "FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    assert left_out == {"FAILED": 1, "STOPPED": 1, "INFEASIBLE": 1, "COMPLETED without a usable value": 2}


def asha_stopped(count: int = 8, completed: int = 3) -> list[RunRecord]:
    """``lr_decides`` trials as a 2-epoch ASHA search leaves them: each logged epoch 1
    (the value lr decides), ``completed`` of them also epoch 2; the others STOPPED."""
    trials = lr_decides(count)
    for n, trial in enumerate(trials):
        first = trial.metrics["val_accuracy"]
        if n < completed:
            trial.history = {1: first, 2: first + 0.01}
            trial.metrics["val_accuracy"] = first + 0.01
        else:
            trial.status, trial.history = "STOPPED", {1: first}
    return trials


def test_too_few_completed_trials_weigh_in_with_every_trained_trial_s_value_at_the_shared_epoch(tmp_path):
    trials = asha_stopped()
    trials.append(_trial(99, {"lr": 1e-3}, {}, status="FAILED"))
    table = search_table(_arm(trials), PLAN)
    assert shared_epoch(table) == 1
    found = diagnose(table, tmp_path)
    assert found.reason is None and found.epoch == 1 and found.completed == 8 and found.left_out == {"FAILED": 1}
    assert found.importances[0].name == "lr"
    assert [p.path.name for p in found.plots] == ["slice.png", "contour.png", "parallel_coordinate.png"]
    assert all("at epoch 1" in plot.caption and "trained trial" in plot.caption for plot in found.plots)
    assert json.loads((tmp_path / "importance.json").read_text())["epoch"] == 1
    study, _ = build_study(table, epoch=1)
    values = [t.value for t in study.trials if t.state.name == "COMPLETE"]
    assert values == [t.history[1] for t in trials[:8]]  # epoch-1 values, never a completed trial's final one


def test_enough_completed_trials_keep_their_final_values(tmp_path):
    found = diagnose(search_table(_arm(asha_stopped(8, completed=4)), PLAN), tmp_path)
    assert found.epoch is None and found.completed == 4 and found.left_out == {"STOPPED": 4}


def test_without_per_epoch_values_too_few_completed_trials_still_get_a_reason(tmp_path):
    trials = asha_stopped()
    for trial in trials:
        trial.history = {}
    found = diagnose(search_table(_arm(trials), PLAN), tmp_path)
    assert found.epoch is None and found.reason == "3 trial(s) to compare; importances need at least 4"


def test_logged_text_becomes_the_distribution_s_values():
    study, _ = build_study(search_table(_arm(lr_decides(4)), PLAN))
    params = study.trials[0].params
    assert isinstance(params["lora_alpha"], int) and isinstance(params["warmup_steps"], int)
    assert isinstance(params["lr"], float) and study.trials[0].distributions["lr"].log


def test_without_a_space_in_the_plan_the_space_is_inferred_from_the_logged_values(tmp_path):
    plan = {"arm": "lora", "objectives": {"val_accuracy": "max"}}  # a plan logged before arms had params
    table = search_table(_arm(lr_decides()), plan)
    assert table.space_source == INFERRED
    assert set(table.space) == {"lr", "lora_alpha", "lora_dropout", "warmup_steps"}  # not seed, r or precision
    found = diagnose(table, tmp_path)
    assert found.importances[0].name == "lr" and found.importances[0].importance > 0.5
