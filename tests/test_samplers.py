"""Sampler names -> Optuna samplers: they build, respect constraints, enumerate grids, pickle."""

from __future__ import annotations

import itertools
import math
import pickle
import warnings
from typing import Any

import optuna
import pytest
import torch

from orchestrator.search.botorch_sampler import MixedBoTorchSampler
from orchestrator.search.registry import SAMPLERS
from orchestrator.search.samplers import SamplerPlan, botorch_candidates, build_sampler, limited_threads
from orchestrator.search.space import DefineByRun, ParamSpec

torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

# the samplers that read trial.set_constraint (botorch-legacy too, slower: docs/samplers.md covers it)
CONSTRAINED = [name for name, entry in SAMPLERS.items() if entry.constraints and not entry.legacy]

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
    study = optuna.create_study(
        directions=directions, sampler=build_sampler(SamplerPlan(name, seed, startup, n_objectives))
    )
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


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_name_builds_an_optuna_sampler(name):
    grid = {"r": [2, 4]} if SAMPLERS[name].grid else None
    for n_objectives in (1, 2) if SAMPLERS[name].multi_objective else (1,):
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
    from orchestrator.execute.searcher import HonestOptunaSearch

    space = DefineByRun(
        {"r": SPACE["r"], "dropout": SPACE["dropout"], "alpha": ParamSpec(type="categorical", choices=[8, 16])}, {}
    )
    grid = space.grid()
    expected = set(itertools.product(*grid.values()))
    assert len(expected) == 4 * 5 * 2
    searcher = HonestOptunaSearch(
        space=space, metric="val_accuracy", mode="max", sampler=build_sampler(SamplerPlan("grid", 0, 0, 1, grid))
    )
    seen = []
    for i in range(len(expected)):
        config = searcher.suggest(f"trial_{i}")
        seen.append(tuple(config[k] for k in grid))
        # at the last point Optuna's GridSampler calls study.stop(), which Ray's OptunaSearch logs and ignores
        searcher.on_trial_complete(f"trial_{i}", {"val_accuracy": 0.5, "epoch": 1})
    assert len(seen) == len(set(seen)) and set(seen) == expected


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_pickles_after_use_and_goes_on_sampling(name):
    """Ray pickles the searcher, sampler and study included, into every experiment checkpoint."""
    import importlib

    for module in SAMPLERS[name].imports:  # CmaEsSampler needs `cmaes` only past its startup trials
        try:
            importlib.import_module(module)
        except ImportError:
            pytest.fail(f"sampler {name} needs the `{module}` package: add it to the dependencies")
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


# -- botorch: orchestrator.search.botorch_sampler ------------------------------------------------
# Every kind of parameter a space file can declare: categorical (numbers and strings), a
# narrow int (discrete), a wide int (relaxed, snapped), a log int, a log float, a stepped
# float, and a conditional parameter (left to the independent sampler).
MIXED = {
    "r": ParamSpec(type="categorical", choices=[2, 4, 8, 16]),
    "cost": ParamSpec(type="categorical", choices=["dual", "fixed"]),
    "layers": ParamSpec(type="int", low=1, high=6),
    "steps": ParamSpec(type="int", low=10, high=500, step=10),
    "rank": ParamSpec(type="int", low=1, high=64, log=True),
    "lr": ParamSpec(type="float", low=1e-4, high=1e-2, log=True),
    "dropout": ParamSpec(type="float", low=0.0, high=0.2, step=0.05),
    "lambda_c": ParamSpec(type="categorical", choices=[0.0, 0.1], when={"cost": "fixed"}),
}


def mixed_objective(p: dict) -> float:
    return (
        -abs(math.log10(p["lr"]) + 2.5)
        + 0.05 * math.log2(p["r"])
        - p["dropout"]
        - 0.01 * abs(p["layers"] - 3)
        + (p["cost"] == "dual") * 0.1
    )


def test_the_mixed_space_encoding_round_trips_every_kind_of_parameter():
    from orchestrator.search.botorch_sampler import MixedSpace

    search_space = {}
    for name in ("r", "cost", "layers", "steps", "rank", "lr", "dropout"):
        trial = optuna.create_study().ask()
        space = DefineByRun({name: MIXED[name]}, {})
        space(trial)
        search_space.update(trial.distributions)
    space = MixedSpace.of(search_space)
    kinds = {c.name: c.kind for c in space.columns}
    assert kinds == {
        "r": "categorical",
        "cost": "categorical",
        "layers": "discrete",
        "steps": "continuous",
        "rank": "continuous",
        "lr": "continuous",
        "dropout": "discrete",
    }
    point = {"r": 8, "cost": "fixed", "layers": 4, "steps": 250, "rank": 8, "lr": 1e-3, "dropout": 0.15}
    row = space.encode([point])[0]
    assert space.decode(row) == pytest.approx(point)
    assert row[[c.name for c in space.columns].index("lr")].item() == pytest.approx(
        0.5
    )  # log scale: 1e-3 is the middle
    assert row[[c.name for c in space.columns].index("r")].item() == 2.0  # a categorical is its choice's index


def test_botorch_suggests_valid_values_for_every_kind_of_parameter():
    sampler = build_sampler(SamplerPlan("botorch", 0, 4, 1))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    space = DefineByRun(MIXED, {})
    for _ in range(8):
        with limited_threads(1):
            trial = study.ask()
            space(trial)
        study.tell(trial, mixed_objective(trial.params))
    for trial in study.trials:
        p = trial.params
        assert p["r"] in (2, 4, 8, 16) and p["cost"] in ("dual", "fixed")
        assert isinstance(p["layers"], int) and 1 <= p["layers"] <= 6
        assert isinstance(p["steps"], int) and 10 <= p["steps"] <= 500 and p["steps"] % 10 == 0
        assert isinstance(p["rank"], int) and 1 <= p["rank"] <= 64
        assert 1e-4 <= p["lr"] <= 1e-2
        assert any(p["dropout"] == pytest.approx(v) for v in (0.0, 0.05, 0.1, 0.15, 0.2))
        assert ("lambda_c" in p) == (p["cost"] == "fixed")
    # past the startup trials the model chose every unconditional parameter
    relative = sampler.infer_relative_search_space(study, study.trials[-1])
    assert set(relative) == set(MIXED) - {"lambda_c"}


def _asks_with_and_without_a_running_trial() -> tuple[dict, dict, dict]:
    """(first ask, second ask while the first runs, second ask after the first failed)."""
    results = []
    for keep_running in (True, False):
        study = search("botorch", trials=8)
        first = study.ask()
        DefineByRun(SPACE, {})(first)
        if not keep_running:
            study.tell(first, state=optuna.trial.TrialState.FAIL)
        second = study.ask()
        DefineByRun(SPACE, {})(second)
        results.append((first.params, second.params))
    (first, spread), (_, alone) = results
    return first, spread, alone


def test_botorch_spreads_a_suggestion_away_from_a_running_trial():
    first, spread, alone = _asks_with_and_without_a_running_trial()

    def distance(a: dict, b: dict) -> float:
        return (
            abs(math.log10(a["lr"]) - math.log10(b["lr"])) / 2
            + (a["r"] != b["r"])
            + abs(a["dropout"] - b["dropout"]) / 0.2
        )

    assert distance(first, alone) < 0.05  # without a pending point the same model suggests the same place
    assert distance(first, spread) > 0.1  # with it, somewhere else


def test_botorch_counts_running_trials_toward_its_random_start(monkeypatch):
    """With trials at once the random start is still n_startup_trials trials (running ones
    count), once 2 have finished."""
    import orchestrator.search.botorch_sampler as botorch_sampler

    model_asks = []
    fitted = botorch_sampler.suggest

    def counted(*args: Any) -> Any:
        model_asks.append(args)
        return fitted(*args)

    monkeypatch.setattr(botorch_sampler, "suggest", counted)
    study = optuna.create_study(direction="maximize", sampler=build_sampler(SamplerPlan("botorch", 0, 4, 1)))
    space = DefineByRun(SPACE, {})

    def ask() -> optuna.Trial:
        trial = study.ask()
        space(trial)
        return trial

    def tell(trial: optuna.Trial) -> None:
        study.tell(trial, objective(trial.params))

    first, second, _ = ask(), ask(), ask()
    tell(first)
    ask()  # 1 finished, 2 running: too few results for a model
    assert not model_asks
    tell(second)
    ask()  # 2 finished + 2 running = the 4-trial start (finished ones alone: 2 of 4)
    assert len(model_asks) == 1


def test_botorch_pickles_with_a_trial_running_and_goes_on_sampling():
    study = search("botorch", trials=6)
    running = study.ask()
    DefineByRun(SPACE, {})(running)
    restored = pickle.loads(pickle.dumps(study))
    trial = restored.ask()
    DefineByRun(SPACE, {})(trial)
    assert set(trial.params) == set(SPACE) and trial.params != running.params


@pytest.mark.slow
def test_botorch_drives_a_real_tune_search_with_two_trials_at_once(tmp_path, shared_ray):
    """Ray Tune + HonestOptunaSearch + botorch: concurrent suggestions, a checkpointed searcher."""
    from optuna.trial import TrialState
    from ray import tune

    from orchestrator.execute.searcher import HonestOptunaSearch

    def trainable(config):  # self-contained: Ray's workers cannot import this test module
        import math

        tune.report(
            {"val_accuracy": math.log10(config["lr"]) + 0.1 * math.log2(config["r"]) - config["dropout"], "epoch": 1}
        )

    searcher = HonestOptunaSearch(
        space=DefineByRun(SPACE, {}),
        metric="val_accuracy",
        mode="max",
        epochs=1,
        sampler=build_sampler(SamplerPlan("botorch", 0, 2, 1)),
    )
    grid = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=6, max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="botorch", verbose=0),
    ).fit()
    assert not grid.errors and len(grid) == 6
    trials = searcher._ot_study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert all(t.params["r"] in (2, 4, 8, 16) and 1e-4 <= t.params["lr"] <= 1e-2 for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6


# -- botorch with learning curves: early epochs and stopped trials as low-fidelity evidence ----------
def _curve_study(epochs: int = 4) -> tuple[optuna.Study, MixedBoTorchSampler]:
    """Six trials as ASHA leaves them: two complete, three stopped after one epoch, one
    running at its second epoch. The curve rises to ``objective`` (value x (1 - 0.5^epoch))."""
    sampler = MixedBoTorchSampler(n_startup_trials=4, seed=0, fidelity_steps=epochs)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    space = DefineByRun(SPACE, {})
    for i, last in enumerate([epochs, 1, epochs, 1, 1, 2]):
        trial = study.ask()
        space(trial)
        final = objective(trial.params)
        for epoch in range(1, last + 1):
            trial.report(final * (1 - 0.5**epoch) - 0.1 * (epochs - epoch), epoch)
        if i == 5:
            continue  # still running
        if last == epochs:
            study.tell(trial, final)
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return study, sampler


def test_learning_curves_become_rows_at_their_fidelity_with_a_complete_trial_ending_at_one():
    from orchestrator.search.botorch_sampler import MixedSpace, TrainingData, learning_curve

    study, _ = _curve_study(epochs=4)
    complete, stopped, running = study.trials[0], study.trials[1], study.trials[5]
    assert learning_curve(complete, 4) == [
        (0.25, complete.intermediate_values[1]),
        (0.5, complete.intermediate_values[2]),
        (0.75, complete.intermediate_values[3]),
        (1.0, complete.value),
    ]
    assert learning_curve(stopped, 4) == [(0.25, stopped.intermediate_values[1])]
    # a long curve keeps at most MAX_FIDELITY_POINTS_PER_TRIAL epochs, the last among them
    long = optuna.trial.create_trial(
        params={}, distributions={}, value=1.0, intermediate_values={e: e / 100 for e in range(1, 101)}
    )
    kept = learning_curve(long, 100)
    assert len(kept) == 4 and kept[0] == (0.01, 0.01) and kept[-1] == (1.0, 1.0)

    trials = study.get_trials(deepcopy=False)
    space = MixedSpace.of(trials[0].distributions)
    data = TrainingData.of_curves(space, trials, study.direction, 4)
    assert data is not None and data.fidelity
    assert len(data.x) == 4 + 1 + 4 + 1 + 1 + 2  # every reported epoch, the running trial's too
    assert data.trials == 5  # finished trials (complete or stopped) count towards the startup rule
    assert data.baseline.shape == (6, len(space.columns) + 1) and bool((data.baseline[:, -1] == 1).all())
    assert data.x[:, -1].tolist().count(1.0) == 2  # only the complete trials were seen at full fidelity
    assert running.state == optuna.trial.TrialState.RUNNING
    # no trial complete yet: nothing at full fidelity to anchor the model, so no model
    assert TrainingData.of_curves(space, [t for t in trials if t.number in (1, 3)], study.direction, 4) is None


def test_botorch_models_a_stopped_trial_by_its_early_epochs():
    """Two trials stopped at the same epoch: the model predicts more at full training for
    the one whose early value was higher, and the stopped trials let the model start
    before ``n_startup_trials`` trials completed."""
    import numpy as np

    from orchestrator.search.botorch_sampler import MixedSpace, TrainingData, fit_model

    study, sampler = _curve_study(epochs=4)
    trials = study.get_trials(deepcopy=False)
    space = MixedSpace.of(trials[0].distributions)
    data = TrainingData.of_curves(space, trials, study.direction, 4)
    model = fit_model(space, data)
    stopped = [i for i, t in enumerate(trials) if t.state == optuna.trial.TrialState.PRUNED]
    early = [trials[i].intermediate_values[1] for i in stopped]
    with torch.no_grad():
        predicted = model.posterior(data.baseline[stopped]).mean.squeeze(-1).numpy()
    assert np.argmax(predicted) == np.argmax(early) and np.argmin(predicted) == np.argmin(early)
    # 2 complete < 4 startup trials, yet 5 finished: the model suggests (not the random startup)
    running = study.ask()
    relative = sampler.infer_relative_search_space(study, running)
    with limited_threads(1):
        assert sampler.sample_relative(study, running, relative)
    final_only = MixedBoTorchSampler(n_startup_trials=4, seed=0)
    assert final_only.sample_relative(study, running, relative) == {}


@pytest.mark.parametrize("fidelity", [None, 4])
def test_botorch_fits_the_constraints_of_a_trial_never_trained_but_not_its_placeholder_value(fidelity):
    """A configuration infeasible before training is told -1e9 (Optuna needs a value) and
    its constraint: the constraint is data, the -1e9 is not (it would flatten the model)."""
    from orchestrator.execute.searcher import HonestOptunaSearch
    from orchestrator.search.botorch_sampler import MixedSpace, TrainingData
    from orchestrator.spec.constraints import parse_constraint

    searcher = HonestOptunaSearch(
        space=DefineByRun(SPACE, {}),
        metric="val_accuracy",
        mode="max",
        epochs=4,
        constraints=[parse_constraint("flops_ratio <= 0.5")],
        sampler=MixedBoTorchSampler(n_startup_trials=3, seed=0, fidelity_steps=fidelity),
    )
    for i in range(6):
        config = searcher.suggest(f"t{i}")
        if i == 2:  # the method's analytic cost alone violates the constraint: never trained
            searcher.on_trial_complete(f"t{i}", {"flops_ratio": 2.0, "epoch": 4, "infeasible_before_training": 1.0})
            continue
        result = {"val_accuracy": objective(config), "flops_ratio": 0.1, "epoch": 4, "training_iteration": 4}
        searcher.on_trial_complete(f"t{i}", result)
    study = searcher._ot_study
    never = study.trials[2]
    assert never.value == -1e9 and never.user_attrs["orchestrate.unknown_objectives"]
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    space = MixedSpace.of(trials[0].distributions)
    if fidelity:
        data = TrainingData.of_curves(space, trials, study.direction, fidelity)
    else:
        data = TrainingData.of_final_values(space, trials, study.directions)
    assert data is not None and len(data.objectives) == 5 and data.objectives.min() > -1e8
    assert len(data.constraints) == 6 and data.constraints.max() == pytest.approx(1.5)
    with limited_threads(1):
        config = searcher.suggest("t6")  # past the startup trials: fitted on both
    assert set(config) == set(SPACE)


def test_the_plan_gives_botorch_the_training_epochs_as_its_fidelity(tmp_path):
    from orchestrator.search.registry import SAMPLERS as TABLE

    sampler = TABLE["botorch"].build(SamplerPlan("botorch", 0, 4, 1, epochs=6))
    assert isinstance(sampler, MixedBoTorchSampler) and sampler._fidelity_steps == 6
    assert MixedBoTorchSampler(fidelity_steps=1)._fidelity_steps is None  # one epoch: no curve to learn from


@pytest.mark.slow
def test_botorch_reads_the_epochs_of_trials_asha_stopped_in_a_real_tune_search(tmp_path, shared_ray):
    """Ray Tune's ASHA + HonestOptunaSearch: stopped trials reach the study PRUNED with
    their per-epoch reports (Ray's ``on_trial_result``), and the sampler fits on them."""
    from optuna.trial import TrialState
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from orchestrator.execute.searcher import HonestOptunaSearch
    from orchestrator.search.botorch_sampler import MixedSpace, TrainingData

    def trainable(config):
        import math

        final = math.log10(config["lr"]) + 0.1 * math.log2(config["r"]) - config["dropout"]
        for epoch in range(1, 4):
            tune.report({"val_accuracy": final * (1 - 0.5**epoch), "epoch": epoch})

    searcher = HonestOptunaSearch(
        space=DefineByRun(SPACE, {}),
        metric="val_accuracy",
        mode="max",
        epochs=3,
        sampler=build_sampler(SamplerPlan("botorch", 0, 3, 1, epochs=3)),
    )
    asha = ASHAScheduler(
        metric="val_accuracy", mode="max", time_attr="training_iteration", max_t=3, grace_period=1, reduction_factor=2
    )
    grid = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=asha, num_samples=8, max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="botorch-asha", verbose=0),
    ).fit()
    assert not grid.errors and len(grid) == 8
    trials = searcher._ot_study.get_trials(deepcopy=False)
    stopped = [t for t in trials if t.state == TrialState.PRUNED]
    assert stopped and all(t.intermediate_values for t in stopped)
    space = MixedSpace.of(next(t for t in trials if t.state == TrialState.COMPLETE).distributions)
    data = TrainingData.of_curves(space, trials, searcher._ot_study.direction, 3)
    assert data is not None and data.trials == 8
    assert int((data.x[:, -1] < 1).sum()) >= len(stopped)  # the stopped trials' epochs are in the model


def test_the_spec_accepts_exactly_the_samplers_and_schedulers_of_the_registry():
    from orchestrator.search.registry import SCHEDULERS
    from orchestrator.spec.models import SearchSpec

    assert SearchSpec.model_fields["sampler"].annotation.__args__ == tuple(SAMPLERS)
    assert SearchSpec.model_fields["scheduler"].annotation.__args__ == tuple(SCHEDULERS)


def test_the_registry_and_the_spec_import_without_optuna_ray_or_torch():
    """``orchestrate validate`` reads the tables; loading a sampler library there costs seconds."""
    import subprocess
    import sys

    code = (
        "import sys, orchestrator.spec.models, orchestrator.search.registry; "
        "print(sorted(m for m in ('optuna', 'ray', 'torch', 'botorch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
