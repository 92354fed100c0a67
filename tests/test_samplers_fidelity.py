"""The multi-fidelity benchmark (benchmarks/samplers_fidelity.py) on a small fake table:
its curve surrogate is exact where measured, its ASHA is orchestrate's (stops trials at
epochs 1, 2 and 4, never past the budget's accounting), and the shipped ``botorch`` reads
the stopped trials' epochs. Nothing here is timed."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import optuna
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import samplers_fidelity as fidelity
from samplers import GRID_ALPHA, GRID_LR, GRID_R


def fake_rows() -> list[dict]:
    """Curves that rise towards a peak at lr 1e-2, higher for r = 4."""
    rows = []
    for r in GRID_R:
        for alpha in GRID_ALPHA:
            for lr in GRID_LR:
                final = 0.8 - 0.1 * math.log10(lr / 0.01) ** 2 + 0.02 * (r == 4)
                curve = [0.5 + (final - 0.5) * (1 - 0.5**e) for e in range(1, 7)]
                rows.append({"r": r, "lora_alpha": alpha, "lr": lr, "val_accuracy": curve[-1], "epochs": curve})
    return rows


@pytest.fixture(scope="module")
def surrogate() -> fidelity.CurveSurrogate:
    return fidelity.CurveSurrogate(fake_rows())


def test_the_curve_surrogate_is_exact_at_measured_points(surrogate):
    row = fake_rows()[10]
    for epoch in range(1, 7):
        assert surrogate(row["r"], row["lora_alpha"], row["lr"], epoch) == pytest.approx(row["epochs"][epoch - 1])
    assert surrogate.best == pytest.approx(max(r["epochs"][-1] for r in fake_rows()))


def test_a_table_without_epochs_is_refused():
    rows = [{**row, "epochs": []} for row in fake_rows()]
    with pytest.raises(SystemExit, match="per-epoch"):
        fidelity.CurveSurrogate(rows)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_asha_stops_trials_and_the_budget_counts_epochs(surrogate, concurrency):
    record = fidelity.one_search("random", seed=0, budget=60, objective=surrogate, concurrency=concurrency)
    assert record.stopped > 0 and record.completed  # ASHA (grace 1, factor 2) stopped some
    assert record.trials == record.stopped + len(record.completed)
    assert all(spent <= 60 + concurrency * fidelity.EPOCHS for spent, _ in record.completed)
    assert record.epochs_to_reach(2.0, 60) is None  # unreachable target


def test_the_shipped_botorch_reads_the_stopped_trials_epochs(surrogate, monkeypatch):
    studies: list[optuna.Study] = []
    create = optuna.create_study
    monkeypatch.setattr(optuna, "create_study", lambda **kw: studies.append(create(**kw)) or studies[-1])
    record = fidelity.one_search("botorch", seed=0, budget=48, objective=surrogate, concurrency=1)
    sampler = studies[0].sampler
    assert sampler._fidelity_steps == fidelity.EPOCHS  # botorch-final would be None
    stopped = studies[0].get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert len(stopped) == record.stopped > 0
    assert all(t.intermediate_values for t in stopped)
