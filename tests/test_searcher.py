"""HonestOptunaSearch: checkpoint and restore, prior trials, failures and pruning as
Optuna sees them (the searcher is driven directly, as Ray Tune drives it)."""

from __future__ import annotations

import math

import pytest
from optuna.trial import TrialState

from orchestrator.execute.searcher import HonestOptunaSearch
from orchestrator.results import COMPLETED, INFEASIBLE, STOPPED, TrialRecord
from orchestrator.search.samplers import SamplerPlan, build_sampler
from orchestrator.search.space import DefineByRun, ParamSpec
from orchestrator.spec.constraints import parse_constraint
from orchestrator.trial.faults import ERROR_KEY

SPACE = {
    "r": ParamSpec(type="categorical", choices=[2, 4, 8, 16]),
    "lr": ParamSpec(type="float", low=1e-4, high=1e-2, log=True),
    "alpha": ParamSpec(type="categorical", choices=[8, 16], when={"r": [8, 16]}),  # conditional
}
BUDGET = parse_constraint("flops_ratio <= 0.5")


def searcher(prior=None, sampler="tpe", points=None) -> HonestOptunaSearch:
    return HonestOptunaSearch(
        space=DefineByRun(SPACE, {"dropout": 0.1}),
        metric="val_accuracy",
        mode="max",
        sampler=build_sampler(SamplerPlan(sampler, 0, 3, 1)),
        constraints=[BUDGET],
        epochs=2,
        prior_trials=prior,
        points_to_evaluate=points,
    )


def result(config: dict, epoch: int = 2) -> dict:
    return {
        "val_accuracy": 0.5 + 0.01 * config["r"],
        "flops_ratio": config["r"] / 16,
        "epoch": epoch,
        "training_iteration": epoch,
    }


def run(search: HonestOptunaSearch, start: int, count: int) -> list[dict]:
    configs = []
    for i in range(start, start + count):
        config = search.suggest(f"t{i}")
        search.on_trial_result(f"t{i}", result(config, 1))
        search.on_trial_complete(f"t{i}", result(config))
        configs.append(config)
    return configs


def test_the_searcher_survives_checkpoint_and_restore_and_goes_on(tmp_path):
    first = searcher()
    run(first, 0, 5)
    pending = first.suggest("t5")  # a trial running at checkpoint time
    first.save(str(tmp_path / "searcher.pkl"))

    restored = searcher()
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert [t.params for t in restored._ot_study.trials] == [t.params for t in first._ot_study.trials]
    assert [t.constraints for t in restored._ot_study.trials[:5]] == [
        t.constraints for t in first._ot_study.trials[:5]
    ]
    restored.on_trial_complete("t5", result(pending))  # the pending trial finishes after the restore
    more = run(restored, 6, 3)
    states = [t.state for t in restored._ot_study.trials]
    assert states.count(TrialState.COMPLETE) == 9 and len(more) == 3
    assert all(
        ("alpha" in c) == (c["r"] in (8, 16)) and c["dropout"] == 0.1 for c in more
    )  # the conditional space round-trips


def test_constraints_reach_optuna_and_violations_are_measured():
    search = searcher()
    (config,) = run(search, 0, 1)
    (trial,) = search._ot_study.trials
    assert trial.system_attrs[f"constraints:{BUDGET}"] == pytest.approx(config["r"] / 16 - 0.5)


def test_an_early_stopped_trial_is_pruned_and_a_failed_one_failed():
    search = searcher()
    a, _ = search.suggest("a"), search.suggest("b")
    search.on_trial_result("a", result(a, 1))
    search.on_trial_complete("a", result(a, 1))  # stopped after epoch 1 of 2
    search.on_trial_result("b", {ERROR_KEY: "NonFiniteLossError: nan"})  # a failure report carries no objective
    search.on_trial_complete("b", {ERROR_KEY: "NonFiniteLossError: nan"})
    assert [t.state for t in search._ot_study.trials] == [TrialState.PRUNED, TrialState.FAIL]


def record(i: int, params: dict, status: str = COMPLETED, **metrics) -> TrialRecord:
    return TrialRecord(f"old{i}", "arm", "trial", {**params, "dropout": 0.1}, status, metrics)


def test_prior_trials_are_told_as_they_ended_before_anything_is_suggested():
    prior = [
        record(0, {"r": 4, "lr": 1e-3}, val_accuracy=0.7, flops_ratio=0.25, epoch=2),
        record(1, {"r": 16, "lr": 1e-3, "alpha": 8}, INFEASIBLE, val_accuracy=0.9, flops_ratio=1.0, epoch=2),
        record(2, {"r": 2, "lr": 5e-3}, STOPPED, val_accuracy=0.55, flops_ratio=0.125, epoch=1),
    ]
    first_point = {"r": 8, "lr": 1e-3, "alpha": 16}
    search = searcher(prior, points=[first_point])
    told = search._ot_study.trials
    assert [t.state for t in told] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING]
    assert told[0].params == {"r": 4, "lr": 1e-3} and told[0].value == 0.7
    assert told[1].params == {"r": 16, "lr": 1e-3, "alpha": 8} and told[1].constraints == {
        str(BUDGET): 0.5
    }  # infeasible: 1.0 - 0.5
    assert set(told[0].distributions) == {"r", "lr"}  # the define-by-run space gave the distributions
    config = search.suggest("new")  # the first point still comes first, and as itself
    assert {k: config[k] for k in first_point} == first_point


def test_a_constrained_sampler_uses_the_prior_trials():
    """With the prior trials alone past its startup, a GP never suggests a known infeasible region first."""
    prior = [
        record(i, {"r": r, "lr": lr}, val_accuracy=0.5 + 0.01 * r, flops_ratio=r / 16, epoch=2)
        for i, (r, lr) in enumerate([(2, 1e-3), (4, 2e-3), (2, 5e-3), (4, 1e-4)])
    ]
    search = searcher(prior, sampler="gp")
    assert len(search._ot_study.trials) == 4 and type(search._ot_study.sampler).__name__ == "GPSampler"
    config = search.suggest("new")
    assert set(config) >= {"r", "lr", "dropout"} and math.isfinite(config["lr"])


def test_a_checkpoint_never_holds_the_progress_callback(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise TypeError("the recorder must stay out of checkpoints")

        def __call__(self, seconds):
            self.seen = seconds

    callback = Unpicklable()
    search = HonestOptunaSearch(space=DefineByRun(SPACE, {}), metric="val_accuracy", mode="max", on_suggest=callback)
    run(search, 0, 1)
    search.save(str(tmp_path / "s.pkl"))  # Ray calls this at every experiment checkpoint
    restored = searcher()
    restored.restore(str(tmp_path / "s.pkl"))
    assert len(restored._ot_study.trials) == 1 and restored._on_suggest is None
