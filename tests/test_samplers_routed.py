"""The routed benchmark (benchmarks/samplers_routed.py) on a small fake table: its surrogate
is exact where measured and interpolates without inventing outcomes, its hypervolume never
counts an infeasible trial, and a short search runs for every sampler it compares. Nothing
here is timed."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import samplers_routed as routed


def fake_rows() -> list[dict]:
    """A smooth made-up landscape on the benchmark's grid: accuracy grows with the budget
    and peaks at lr 1.2e-2; flops_ratio ~ rho * r_max / 8 plus routers."""
    rows = []
    for r in routed.GRID_R_MAX:
        for lr in routed.GRID_LR:
            for rho in routed.GRID_RHO:
                accuracy = 0.55 + 0.6 * rho * r / 8 - 0.05 * (math.log10(lr / 0.012)) ** 2
                rows.append(
                    {
                        "r_max": r,
                        "lr": lr,
                        "target_rho": rho,
                        "val_accuracy": accuracy,
                        "flops_ratio": 0.08 + rho * r / 8,
                    }
                )
    return rows


@pytest.fixture(scope="module")
def surrogate() -> routed.RoutedSurrogate:
    return routed.RoutedSurrogate(fake_rows())


def test_surrogate_is_exact_at_measured_points(surrogate: routed.RoutedSurrogate) -> None:
    for row in fake_rows():
        outcome = surrogate(row["r_max"], row["lr"], row["target_rho"])
        assert outcome.val_accuracy == pytest.approx(row["val_accuracy"], abs=1e-12)
        assert outcome.flops_ratio == pytest.approx(row["flops_ratio"], abs=1e-12)


def test_between_points_both_outcomes_are_one_mixture_of_the_neighbours(surrogate: routed.RoutedSurrogate) -> None:
    """Midway in log10(lr) and rho, each outcome is the mean of the four corners'."""
    lr = math.sqrt(0.006 * 0.012)
    outcome = surrogate(8, lr, 0.125)
    corners = [surrogate(8, a, b) for a in (0.006, 0.012) for b in (0.1, 0.15)]
    assert outcome.val_accuracy == pytest.approx(np.mean([c.val_accuracy for c in corners]))
    assert outcome.flops_ratio == pytest.approx(np.mean([c.flops_ratio for c in corners]))


def test_surrogate_clips_to_the_measured_grid(surrogate: routed.RoutedSurrogate) -> None:
    assert surrogate(4, 1.0, 9.0) == surrogate(4, routed.GRID_LR[-1], routed.GRID_RHO[-1])
    assert surrogate(16, 1e-9, 0.0) == surrogate(16, routed.GRID_LR[0], routed.GRID_RHO[0])


def test_an_incomplete_table_is_refused() -> None:
    with pytest.raises(SystemExit, match="incomplete"):
        routed.RoutedSurrogate(fake_rows()[:-1])


def test_hypervolume_is_the_feasible_front_area_from_the_reference_point() -> None:
    ref = routed.REF_ACCURACY
    # two feasible trade-offs (one dominated point), areas by hand: a staircase of two steps
    front = [[ref + 0.2, 0.2], [ref + 0.1, 0.1], [ref + 0.05, 0.15]]
    expected = 0.1 * (0.25 - 0.1) + 0.1 * (0.25 - 0.2)
    assert routed.feasible_hypervolume(np.array(front)) == pytest.approx(expected)


def test_an_infeasible_trial_never_counts() -> None:
    ref = routed.REF_ACCURACY
    feasible = [[ref + 0.1, 0.2]]
    assert routed.feasible_hypervolume(np.array([*feasible, [0.99, 0.2500001]])) == pytest.approx(
        routed.feasible_hypervolume(np.array(feasible))
    )
    assert routed.feasible_hypervolume(np.array([[0.99, 0.3]])) == 0.0
    assert routed.feasible_hypervolume(np.array([[ref - 0.01, 0.1]])) == 0.0  # below the reference accuracy


def test_the_dense_front_bounds_the_measured_one(surrogate: routed.RoutedSurrogate) -> None:
    measured = routed.feasible_hypervolume(np.array([[r["val_accuracy"], r["flops_ratio"]] for r in fake_rows()]))
    assert measured > 0
    assert routed.feasible_hypervolume(surrogate.dense_outcomes(4)) >= measured - 1e-12


def test_thinning_a_large_set_keeps_its_front() -> None:
    """The chunked Pareto filter of a dense grid gives BoTorch's front of the whole set."""
    import torch
    from botorch.utils.multi_objective.pareto import is_non_dominated

    points = torch.rand(3000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.double)
    thinned = routed._pareto_front(points, is_non_dominated, chunk=500)
    whole = points[is_non_dominated(points)]
    assert sorted(map(tuple, thinned.tolist())) == sorted(map(tuple, whole.tolist()))


@pytest.mark.parametrize("name", ["random", "tpe", "gp", "nsga2", "botorch-legacy", "botorch"])
def test_a_short_constrained_search_runs(name: str, surrogate: routed.RoutedSurrogate) -> None:
    search = routed.one_search(name, seed=0, trials=6, objective=surrogate, concurrency=2)
    assert len(search.outcomes) == 6
    assert len(search.seconds) == 6
    assert 0.0 <= search.hypervolume_after(6) <= routed.feasible_hypervolume(surrogate.dense_outcomes(4)) + 1e-9
