"""Optuna's pruners as a Ray Tune scheduler: the decision is Optuna's, the stop Ray's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from orchestrator.execute.pruning import OptunaPrunerScheduler, build_pruner, build_scheduler
from orchestrator.search.registry import PRUNERS, SCHEDULERS
from orchestrator.trial.faults import ERROR_KEY


def trial(name: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=name)


def drive(scheduler: OptunaPrunerScheduler, name: str, values: list[float]) -> list[str]:
    t = trial(name)
    scheduler.on_trial_add(None, t)
    actions = []
    for epoch, value in enumerate(values, start=1):
        action = scheduler.on_trial_result(None, t, {"val_accuracy": value, "training_iteration": epoch})
        actions.append(action)
        if action == TrialScheduler.STOP:
            break
    scheduler.on_trial_complete(
        None, t, {"val_accuracy": values[len(actions) - 1], "training_iteration": len(actions)}
    )
    return actions


@pytest.mark.parametrize("name", PRUNERS)
def test_every_pruner_builds(name):
    assert build_pruner(name, max_epochs=4, trials=8) is not None


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_name_builds_a_ray_scheduler_and_one_epoch_never_stops_early(name):
    from ray.tune.schedulers import FIFOScheduler

    scheduler = build_scheduler(name, "val_accuracy", "max", max_epochs=4, trials=8)
    assert isinstance(scheduler, TrialScheduler)
    assert isinstance(scheduler, OptunaPrunerScheduler) == SCHEDULERS[name].optuna_pruner
    assert type(build_scheduler(name, "val_accuracy", "max", max_epochs=1, trials=8)) is FIFOScheduler


def test_the_median_pruner_stops_a_trial_below_the_median_and_lets_good_ones_run():
    scheduler = OptunaPrunerScheduler("median", "val_accuracy", "max", max_epochs=4, trials=8)  # 2 startup trials
    assert drive(scheduler, "a", [0.6, 0.7, 0.8, 0.85]) == [TrialScheduler.CONTINUE] * 4
    assert drive(scheduler, "b", [0.62, 0.72, 0.8, 0.86]) == [TrialScheduler.CONTINUE] * 4
    assert drive(scheduler, "bad", [0.3, 0.3, 0.3, 0.3]) == [TrialScheduler.STOP]
    assert drive(scheduler, "good", [0.7, 0.8, 0.9, 0.9]) == [TrialScheduler.CONTINUE] * 4
    assert scheduler.pruned == ["bad"]


def test_a_minimised_objective_prunes_the_high_values():
    scheduler = OptunaPrunerScheduler("median", "val_loss", "min", max_epochs=3, trials=8)
    for name in ("a", "b"):
        t = trial(name)
        scheduler.on_trial_add(None, t)
        for epoch, value in enumerate([0.7, 0.5, 0.4], start=1):
            scheduler.on_trial_result(None, t, {"val_loss": value, "training_iteration": epoch})
        scheduler.on_trial_complete(None, t, {"val_loss": 0.4})
    worse = trial("worse")
    scheduler.on_trial_add(None, worse)
    assert scheduler.on_trial_result(None, worse, {"val_loss": 2.0, "training_iteration": 1}) == TrialScheduler.STOP


def test_failure_reports_and_missing_values_never_prune():
    scheduler = OptunaPrunerScheduler("sha", "val_accuracy", "max", max_epochs=4, trials=8)
    t = trial("x")
    scheduler.on_trial_add(None, t)
    assert (
        scheduler.on_trial_result(None, t, {ERROR_KEY: "RuntimeError: boom", "training_iteration": 1})
        == TrialScheduler.CONTINUE
    )
    assert (
        scheduler.on_trial_result(None, t, {"val_accuracy": float("nan"), "training_iteration": 1})
        == TrialScheduler.CONTINUE
    )
    scheduler.on_trial_error(None, t)
    assert [tr.state.name for tr in scheduler._study.trials] == ["FAIL"]


@pytest.mark.slow
def test_a_real_tune_search_with_the_median_pruner_stops_bad_trials_and_optuna_sees_them_pruned(tmp_path, shared_ray):
    """Ray Tune + HonestOptunaSearch + the median pruner, on a trainable whose curve is set by x."""
    import ray
    from optuna.trial import TrialState
    from ray import tune

    from orchestrator.execute.ray_session import ray_session
    from orchestrator.execute.searcher import HonestOptunaSearch
    from orchestrator.search.samplers import SamplerPlan, build_sampler
    from orchestrator.search.space import DefineByRun, ParamSpec

    def trainable(config):
        for epoch in range(1, 5):
            tune.report({"val_accuracy": config["x"] * epoch / 4, "epoch": epoch})

    searcher = HonestOptunaSearch(
        space=DefineByRun({"x": ParamSpec(type="float", low=0.0, high=1.0)}, {}),
        metric="val_accuracy",
        mode="max",
        sampler=build_sampler(SamplerPlan("random", 0, 0, 1)),
        epochs=4,
    )
    scheduler = OptunaPrunerScheduler("median", "val_accuracy", "max", max_epochs=4, trials=12)
    with ray_session(num_cpus=2):
        grid = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=12, max_concurrent_trials=1
            ),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="pruned", verbose=0),
        ).fit()
        assert ray.is_initialized()
    epochs = sorted(r.metrics["epoch"] for r in grid)
    assert epochs.count(4) >= 3 and epochs[0] < 4  # some ran to the end, some were stopped
    states = [t.state for t in searcher._ot_study.trials]
    assert (
        states.count(TrialState.PRUNED) == len(scheduler.pruned) == epochs.count(1) + epochs.count(2) + epochs.count(3)
    )
