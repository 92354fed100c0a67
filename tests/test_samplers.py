"""Sampler names -> Optuna samplers: they build, respect constraints, enumerate grids, pickle."""

from __future__ import annotations

import itertools
import math
import pickle
import warnings

import optuna
import pytest
import torch

from orchestrator.samplers import SAMPLER_TRAITS, SamplerPlan, botorch_candidates, build_sampler, limited_threads
from orchestrator.space import DefineByRun, ParamSpec

torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

CONSTRAINED = ["tpe", "gp", "botorch", "nsga2"]  # the samplers that read trial.set_constraint

# A LoRA-like space; the objective grows with lr and r, and the constraint caps r * lr,
# so the unconstrained optimum (largest r and lr) is infeasible.
SPACE = {
    "r": ParamSpec(type="categorical", choices=[2, 4, 8, 16]),
    "lr": ParamSpec(type="float", low=1e-4, high=1e-2, log=True),
    "dropout": ParamSpec(type="float", low=0.0, high=0.2, step=0.05),
}


def objective(params: dict) -> float:
    return math.log10(params["lr"]) + 0.1 * math.log2(params["r"]) - params["dropout"]


def cost(params: dict) -> float:
    """<= 0 feasible: r * lr at most 0.01."""
    return params["r"] * params["lr"] - 0.01


def search(name: str, trials: int, n_objectives: int = 1, startup: int = 4, seed: int = 0) -> optuna.Study:
    directions = ["maximize"] + ["minimize"] * (n_objectives - 1)
    study = optuna.create_study(directions=directions, sampler=build_sampler(SamplerPlan(name, seed, startup, n_objectives)))
    space = DefineByRun(SPACE, {})
    for _ in range(trials):
        with limited_threads(1):
            trial = study.ask()
            space(trial)
        trial.set_constraint("r*lr <= 0.01", cost(trial.params))  # as HonestOptunaSearch, before tell
        values = [objective(trial.params), float(trial.params["r"])][:n_objectives]
        study.tell(trial, values)
    return study


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return all(value <= 0 for value in trial.constraints.values())


@pytest.mark.parametrize("name", sorted(SAMPLER_TRAITS))
def test_every_sampler_name_builds_an_optuna_sampler(name):
    grid = {"r": [2, 4]} if name == "grid" else None
    for n_objectives in (1, 2) if SAMPLER_TRAITS[name][0] else (1,):
        sampler = build_sampler(SamplerPlan(name, 0, 3, n_objectives, grid))
        assert isinstance(sampler, optuna.samplers.BaseSampler)


@pytest.mark.parametrize("name", CONSTRAINED)
def test_a_constrained_search_never_reports_an_infeasible_best(name):
    study = search(name, trials={"botorch": 8, "gp": 10}.get(name, 16))
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    # the constraint bites: the best trial overall violates it, so ignoring it would be wrong
    assert not feasible(max(done, key=lambda t: t.value))
    candidates = [t for t in done if feasible(t)]
    assert candidates, "no feasible trial at all"
    best = max(candidates, key=lambda t: t.value)  # orchestrate: best finished feasible trial
    assert cost(best.params) <= 0
    assert feasible(study.best_trial) and study.best_trial.number == best.number


@pytest.mark.parametrize("name", ["tpe", "nsga2", "botorch"])
def test_a_constrained_two_objective_search_keeps_only_feasible_trials_on_its_front(name):
    study = search(name, trials=6 if name == "botorch" else 12, n_objectives=2, startup=5)
    front = study.best_trials
    assert front and all(feasible(t) for t in front)


def test_the_grid_sampler_enumerates_a_finite_space_exactly_once_through_the_searcher():
    from orchestrator.searcher import HonestOptunaSearch

    space = DefineByRun({"r": SPACE["r"], "dropout": SPACE["dropout"], "alpha": ParamSpec(type="categorical", choices=[8, 16])}, {})
    grid = space.grid()
    expected = set(itertools.product(*grid.values()))
    assert len(expected) == 4 * 5 * 2
    searcher = HonestOptunaSearch(space=space, metric="val_accuracy", mode="max",
                                  sampler=build_sampler(SamplerPlan("grid", 0, 0, 1, grid)))
    seen = []
    for i in range(len(expected)):
        config = searcher.suggest(f"trial_{i}")
        seen.append(tuple(config[k] for k in grid))
        # at the last point Optuna's GridSampler calls study.stop(), which Ray's OptunaSearch logs and ignores
        searcher.on_trial_complete(f"trial_{i}", {"val_accuracy": 0.5, "epoch": 1})
    assert len(seen) == len(set(seen)) and set(seen) == expected


@pytest.mark.parametrize("name", sorted(SAMPLER_TRAITS))
def test_every_sampler_pickles_after_use_and_goes_on_sampling(name):
    """Ray pickles the searcher, sampler and study included, into every experiment checkpoint."""
    if name == "cmaes":
        import importlib.util

        assert importlib.util.find_spec("cmaes"), "CmaEsSampler needs the `cmaes` package past its startup trials: add it to the dependencies"
    space = DefineByRun({k: SPACE[k] for k in ("r", "dropout")}, {}) if name == "grid" else DefineByRun(SPACE, {})
    grid = space.grid() if name == "grid" else None
    startup = 3
    study = optuna.create_study(sampler=build_sampler(SamplerPlan(name, 0, startup, 1, grid)))
    for _ in range(startup + 1):  # past the startup trials: the model-based samplers have fitted once
        trial = study.ask()
        space(trial)
        trial.set_constraint("r*lr <= 0.01", cost({"lr": 1e-3, **trial.params}))
        study.tell(trial, objective({"lr": 1e-3, **trial.params}))
    restored = pickle.loads(pickle.dumps(study))
    assert type(restored.sampler) is type(study.sampler)
    trial = restored.ask()
    space(trial)
    assert set(trial.params) == set(space.params)


def test_botorch_candidates_stay_in_bounds_and_avoid_a_pending_point():
    torch.manual_seed(0)
    bounds = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    x = torch.rand(8, 2, dtype=torch.float64) * bounds[1]
    y = -((x[:, :1] - 0.7) ** 2) - ((x[:, 1:] - 1.0) ** 2)
    con = x[:, :1] - 0.9  # feasible when x0 <= 0.9
    first = botorch_candidates(x, y, con, bounds, None)
    assert first.shape == (1, 2) and bool(((first >= bounds[0]) & (first <= bounds[1])).all())
    second = botorch_candidates(x, y, con, bounds, first)  # the first is still running
    assert torch.dist(first, second) > 1e-3
    two = botorch_candidates(x, torch.cat([y, -x[:, 1:]], dim=1), con, bounds, None)
    assert two.shape == (1, 2) and bool(((two >= bounds[0]) & (two <= bounds[1])).all())
