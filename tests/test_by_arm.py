"""The arm dispatchers that let one Tuner search every arm (``orchestrator.execute.by_arm``),
driven directly as Ray Tune drives them, with the real per-arm searchers and schedulers.
A real Tuner runs them in every end-to-end test (test_e2e, test_shipped_hypotheses, ...)."""

from __future__ import annotations

from types import SimpleNamespace

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from orchestrator.execute.by_arm import ArmScheduler, ArmSearcher
from orchestrator.execute.searcher import HonestOptunaSearch
from orchestrator.search.samplers import SamplerPlan, build_sampler
from orchestrator.search.space import DefineByRun, ParamSpec
from orchestrator.trial.trainable import ARM_KEY

SPACES = {
    "lora": {"r": ParamSpec(type="categorical", choices=[2, 4, 8])},
    "adamss": {"num_subspaces": ParamSpec(type="int", low=2, high=10)},
}


def searchers() -> dict[str, HonestOptunaSearch]:
    return {
        arm: HonestOptunaSearch(
            space=DefineByRun(space, {}),
            metric="val_accuracy",
            mode="max",
            sampler=build_sampler(SamplerPlan("tpe", 0, 2, 1)),
            epochs=1,
        )
        for arm, space in SPACES.items()
    }


def finish(search: ArmSearcher, trial_id: str, value: float) -> None:
    result = {"val_accuracy": value, "epoch": 1, "training_iteration": 1}
    search.on_trial_result(trial_id, result)
    search.on_trial_complete(trial_id, result)


def test_each_arm_gets_its_budget_from_its_own_searcher_in_order_then_finished() -> None:
    search = ArmSearcher(searchers(), {"lora": 2, "adamss": 3})
    configs = []
    for i in range(5):
        configs.append(search.suggest(f"t{i}"))
        finish(search, f"t{i}", 0.5 + i / 100)
    assert [c[ARM_KEY] for c in configs] == ["lora", "lora", "adamss", "adamss", "adamss"]
    assert all(set(c) == {"r", ARM_KEY} for c in configs[:2]) and all(
        set(c) == {"num_subspaces", ARM_KEY} for c in configs[2:]
    )
    assert search.suggest("t5") == Searcher.FINISHED
    # every result reached its own arm's study, none the other's
    assert (
        len(search.searchers["lora"]._ot_study.trials) == 2 and len(search.searchers["adamss"]._ot_study.trials) == 3
    )


def test_an_arm_with_no_new_trials_is_skipped_and_a_waiting_arm_lets_the_next_one_start() -> None:
    class Waiting(Searcher):
        def suggest(self, trial_id):
            return None  # e.g. a sampler that needs the results of its running trials

    search = ArmSearcher(
        {"done": searchers()["lora"], "waits": Waiting(), "next": searchers()["adamss"]},
        {"done": 0, "waits": 2, "next": 1},
    )
    assert search.suggest("t0")[ARM_KEY] == "next"
    assert search.suggest("t1") is None  # not FINISHED: "waits" still has trials to start


def test_checkpoint_and_restore_keep_every_arms_study_and_counts(tmp_path) -> None:
    first = ArmSearcher(searchers(), {"lora": 2, "adamss": 2})
    for i in range(3):
        first.suggest(f"t{i}")
        finish(first, f"t{i}", 0.6)
    first.save(str(tmp_path / "searcher.pkl"))

    restored = ArmSearcher(searchers(), {"lora": 2, "adamss": 2})
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.started == {"lora": 2, "adamss": 1}
    assert len(restored.searchers["lora"]._ot_study.trials) == 2
    assert restored.suggest("t3")[ARM_KEY] == "adamss"
    assert restored.suggest("t4") == Searcher.FINISHED


def test_the_scheduler_asks_only_the_trials_own_arm() -> None:
    asha = ASHAScheduler(
        metric="val_accuracy", mode="max", time_attr="training_iteration", max_t=4, grace_period=1, reduction_factor=2
    )
    scheduler = ArmScheduler({"lora": asha, "adamss": FIFOScheduler()})
    trials = {
        f"{arm}{i}": SimpleNamespace(trial_id=f"{arm}{i}", config={ARM_KEY: arm})
        for arm in ("lora", "adamss")
        for i in range(3)
    }
    for trial in trials.values():
        scheduler.on_trial_add(None, trial)
    # ASHA stops lora's worse trials at its first rung; adamss's equally bad ones go on
    decisions = {
        tid: scheduler.on_trial_result(
            None, t, {"val_accuracy": {"0": 0.9, "1": 0.1, "2": 0.1}[tid[-1]], "training_iteration": 1}
        )
        for tid, t in trials.items()
    }
    assert decisions["lora0"] == TrialScheduler.CONTINUE and TrialScheduler.STOP in (
        decisions["lora1"],
        decisions["lora2"],
    )
    assert all(decisions[f"adamss{i}"] == TrialScheduler.CONTINUE for i in range(3))
