"""Which trials ``botorch``'s GP sees in a large study (orchestrator/search/model_subset.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import optuna
import pytest
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState, create_trial

from orchestrator.search import botorch_sampler
from orchestrator.search.botorch_sampler import MixedBoTorchSampler
from orchestrator.search.model_subset import UNKNOWN_OBJECTIVES_ATTR, likely_best, model_trials, recent_pending
from orchestrator.search.samplers import limited_threads

if TYPE_CHECKING:
    import torch

MAX = [StudyDirection.MAXIMIZE]
DIST: dict[str, BaseDistribution] = {"x": FloatDistribution(0.0, 1.0)}


def _trials(values: list[float]) -> list[FrozenTrial]:
    trials = []
    for number, value in enumerate(values):
        trial = create_trial(value=value, params={"x": value % 1}, distributions=DIST)
        trial.number = number
        trials.append(trial)
    return trials


def test_a_small_study_is_kept_whole_and_the_rng_untouched() -> None:
    trials = _trials([0.1, 0.5, 0.3])
    rng = np.random.RandomState(0)
    assert model_trials(trials, MAX, 3, rng) is trials
    assert rng.randint(1000) == np.random.RandomState(0).randint(1000)  # same sequence as before


def test_the_best_half_and_a_random_sample_of_the_rest_in_study_order() -> None:
    values = list(np.random.default_rng(0).permutation(300) / 300)
    trials = _trials(values)
    kept = model_trials(trials, MAX, 128, np.random.RandomState(0))
    assert len(kept) == 128 and len({t.number for t in kept}) == 128
    assert [t.number for t in kept] == sorted(t.number for t in kept)
    best_64 = {t.number for t in sorted(trials, key=lambda t: -t.value)[:64]}  # type: ignore[operator]
    assert best_64 <= {t.number for t in kept}
    rest = [float(t.values[0]) for t in kept if t.number not in best_64]
    assert min(rest) < 0.2 and max(rest) > 0.5  # the sample spans the rest, not its top
    other = model_trials(trials, MAX, 128, np.random.RandomState(1))
    assert {t.number for t in other} != {t.number for t in kept}  # a new sample per draw
    minimised = model_trials(trials, [StudyDirection.MINIMIZE], 128, np.random.RandomState(0))
    assert {t.number for t in sorted(trials, key=lambda t: t.value)[:64]} <= {t.number for t in minimised}  # type: ignore[arg-type, return-value]


def test_feasible_trials_rank_first_then_the_fewest_dominating() -> None:
    # two objectives, both maximised: (i, 9 - i) for i < 10 is a Pareto front; the rest is
    # dominated; the two best-looking trials violate a constraint
    values = [(float(i), 9.0 - i) for i in range(10)] + [(i / 10, i / 10) for i in range(40)]
    trials = []
    for number, pair in enumerate(values + [(20.0, 20.0), (21.0, 21.0)]):
        infeasible = number >= len(values)
        trial = create_trial(
            values=list(pair), params={"x": 0.5}, distributions=DIST, constraints={"c": 1.0 if infeasible else -1.0}
        )
        trial.number = number
        trials.append(trial)
    kept = model_trials(trials, [StudyDirection.MAXIMIZE] * 2, 20, np.random.RandomState(0))
    numbers = {t.number for t in kept}
    assert set(range(10)) <= numbers  # the feasible front fills the best half
    assert len(kept) == 20


def test_stopped_trials_rank_by_their_last_epoch_and_never_trained_ones_last() -> None:
    complete = _trials([0.2] * 6)
    stopped = create_trial(
        state=TrialState.PRUNED, params={"x": 0.1}, distributions=DIST, intermediate_values={1: 0.1, 2: 0.9}
    )
    never = create_trial(value=-1e9, params={"x": 0.3}, distributions=DIST, user_attrs={UNKNOWN_OBJECTIVES_ATTR: True})
    huge = create_trial(value=1e9, params={"x": 0.3}, distributions=DIST, user_attrs={UNKNOWN_OBJECTIVES_ATTR: True})
    for number, trial in enumerate([stopped, never, huge], start=6):
        trial.number = number
    trials = [*complete, stopped, never, huge]
    for seed in range(5):
        kept = model_trials(trials, MAX, 2, np.random.RandomState(seed))
        assert kept[0] is stopped or kept[1] is stopped  # 0.9 at epoch 2 is the best known value
    # limit 8: the best half is the stopped trial and three 0.2s; a never-trained trial's
    # placeholder 1e9 does not put it there, so some samples of the rest leave it out
    kept_sets = [model_trials(trials, MAX, 8, np.random.RandomState(seed)) for seed in range(20)]
    assert all(stopped in kept for kept in kept_sets)
    assert not all(huge in kept for kept in kept_sets)


def test_with_learning_curves_the_bound_counts_observations() -> None:
    """Three epochs per complete trial, one per stopped one: the best trials fill half of
    the 12 observations (two complete trials), the random rest the other half."""
    complete = _trials([0.9, 0.8, 0.7, 0.6])
    stopped = []
    for number in range(4, 20):
        trial = create_trial(
            state=TrialState.PRUNED, params={"x": 0.5}, distributions=DIST, intermediate_values={1: 0.1}
        )
        trial.number = number
        stopped.append(trial)
    trials = complete + stopped
    rows = {t.number: 3 if t.state == TrialState.COMPLETE else 1 for t in trials}
    for seed in range(5):
        kept = model_trials(trials, MAX, 12, np.random.RandomState(seed), lambda t: rows[t.number])
        assert {0, 1} <= {t.number for t in kept}  # 6 observations: the best half
        assert sum(rows[t.number] for t in kept) <= 12 and len(kept) >= 4


def test_recent_pending_keeps_the_latest_started() -> None:
    running = _trials([0.5] * 20)
    assert [t.number for t in recent_pending(running[::-1], 4)] == [16, 17, 18, 19]
    assert recent_pending(running[:3], 4) == running[:3]


class _KnownPosterior:
    """A model whose posterior at any ``len(means)`` points is independent N(mean, 1) per
    output (columns: objective, then constraints)."""

    def __init__(self, means: list[list[float]]) -> None:
        import torch

        self.means = torch.tensor(means, dtype=torch.float64)

    def posterior(self, X: object) -> object:
        import torch
        from botorch.posteriors import GPyTorchPosterior
        from gpytorch.distributions import MultitaskMultivariateNormal, MultivariateNormal

        n, outputs = self.means.shape
        if outputs == 1:
            return GPyTorchPosterior(MultivariateNormal(self.means[:, 0], torch.eye(n, dtype=torch.float64)))
        covariance = torch.eye(n * outputs, dtype=torch.float64)
        return GPyTorchPosterior(MultitaskMultivariateNormal(self.means, covariance))


def _first_output(samples: torch.Tensor, X: torch.Tensor | None = None) -> torch.Tensor:
    return samples[..., 0]


def _second_output(samples: torch.Tensor) -> torch.Tensor:
    return samples[..., 1]


def _likely_best_rows(means: list[list[float]], limit: int, constrained: bool = False) -> list[int]:
    import torch
    from botorch.acquisition.objective import GenericMCObjective

    points = torch.arange(len(means), dtype=torch.float64).reshape(-1, 1)  # row i holds i
    objective = GenericMCObjective(_first_output)
    constraints = [_second_output] if constrained else None
    with torch.random.fork_rng():
        torch.manual_seed(0)
        kept = likely_best(_KnownPosterior(means), points, objective, constraints, limit)  # type: ignore[arg-type]
    return [int(x) for x in kept[:, 0]]


def test_likely_best_keeps_the_points_most_often_best_in_their_order() -> None:
    # P(best) 0.55 / 0.30 / 0.15 for rows 3 / 4 / 1; rows 0 and 2 (12 sd below) never.
    # (BoTorch's prune_inferior_points with max_frac=2/5 returns rows 1 and 2 here.)
    means = [[-10.0], [2.0], [-10.0], [3.0], [2.5]]
    assert _likely_best_rows(means, 2) == [3, 4]
    assert _likely_best_rows(means, 10) == [1, 3, 4]  # under the limit: every point ever best


def test_likely_best_ranks_infeasible_points_last() -> None:
    # row 0 has the best objective but violates its constraint (mean 10 > 0) in every sample
    means = [[9.0, 10.0], [3.0, -10.0], [2.0, -10.0], [-10.0, -10.0]]
    assert _likely_best_rows(means, 1, constrained=True) == [1]
    assert _likely_best_rows(means, 10, constrained=True) == [1, 2]
    # none feasible: the closest to feasible
    assert _likely_best_rows([[9.0, 10.0], [0.0, 5.0], [1.0, 20.0]], 1, constrained=True) == [1]


@pytest.mark.parametrize("fidelity", [None, 3])
def test_the_sampler_fits_at_most_its_bound(monkeypatch: pytest.MonkeyPatch, fidelity: int | None) -> None:
    """A real study past the bounds: the GP is fitted on MAX_MODEL_POINTS observations and
    the acquisition sees MAX_PENDING_POINTS running trials and MAX_BASELINE_POINTS
    observed points (spied on, then run for real)."""
    monkeypatch.setattr(botorch_sampler, "MAX_MODEL_POINTS", 12)
    monkeypatch.setattr(botorch_sampler, "MAX_MODEL_POINTS_WITH_CURVES", 12)
    monkeypatch.setattr(botorch_sampler, "MAX_PENDING_POINTS", 2)
    monkeypatch.setattr(botorch_sampler, "MAX_BASELINE_POINTS", 3)
    seen: list[tuple[int, int]] = []
    real_suggest = botorch_sampler.suggest
    baselines: list[tuple[int, int]] = []

    def spy_baseline(model, points, objective, constraints, limit):
        kept = likely_best(model, points, objective, constraints, limit)
        baselines.append((len(points), len(kept)))
        return kept

    monkeypatch.setattr(botorch_sampler, "likely_best", spy_baseline)

    def spy(space, data, pending, seed):
        seen.append((data.trials, 0 if pending is None else len(pending)))
        return real_suggest(space, data, pending, seed)

    monkeypatch.setattr(botorch_sampler, "suggest", spy)
    study = optuna.create_study(
        direction="maximize", sampler=MixedBoTorchSampler(n_startup_trials=4, seed=0, fidelity_steps=fidelity)
    )
    running = []
    with limited_threads(1):
        for i in range(30):
            trial = study.ask()
            x, r = trial.suggest_float("x", 0, 1), trial.suggest_categorical("r", [2, 4, 8])
            if fidelity:
                trial.report(x * r / 2, 1)
            if i % 6 == 5:  # leave some running: pending points
                running.append(trial)
                continue
            study.tell(trial, x * r)
    assert len(running) == 5
    # 25 finished; 12 observations: 12 trials, or with curves 6 (epoch 1 and the final value each)
    assert seen and max(trials for trials, _ in seen) == (6 if fidelity else 12)
    assert max(pending for _, pending in seen) == 2
    assert len(baselines) == len(seen) and max(kept for _, kept in baselines) <= 3 < max(n for n, _ in baselines)
    assert study.trials[-1].params  # the suggestions were made
