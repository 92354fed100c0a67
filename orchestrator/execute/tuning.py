"""Run trials through Ray Tune: one Tuner for every arm's search, then one Tuner per
round of confirmation for the arms in that round.

Only this module builds ``Tuner`` objects. Ray Tune owns scheduling, resources,
retries and distribution; we pass it a searcher, a scheduler and a recorder.

Why one Tuner for all arms, twice: a Tuner starts its own worker processes, and each
one imports torch, transformers and peft (about 8-10 s of CPU on a small machine)
before its first trial. With ``reuse_actors`` the same workers serve every arm's
trials. The searches keep a searcher and a scheduler per arm through the dispatchers
in ``by_arm``; the confirmation runs need neither (a grid over arm x seed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.execute.recorder import RecorderCallback, TrialRecorder
from orchestrator.plan import ArmPlan, SearchSettings
from orchestrator.results import TrialRecord
from orchestrator.search.samplers import build_sampler
from orchestrator.spec.models import Resources
from orchestrator.trial.trainable import ARM_KEY, SEED_KEY, tune_entry
from orchestrator.trial.training import TrialSetup


def resources_dict(resources: Resources) -> dict[str, float]:
    out: dict[str, float] = {"cpu": resources.cpu, "gpu": resources.gpu}
    if resources.memory_gb:
        out["memory"] = resources.memory_gb * 2**30
    out.update(resources.custom)
    return out


@dataclass(frozen=True)
class ConfirmRound:
    """One round of confirmation: its number (1-based) and its seeds.

    Each round is its own Tuner experiment, and the key of its callback is saved per arm
    under the round's number (``RunState.set_callback_key``), so a kill during round k
    restores round k's Tuner and never another round's. Round 1 keeps the experiment name
    a confirmation had before it came in rounds, so a run interrupted then resumes as before."""

    index: int
    seeds: list[int]

    def experiment(self, run_name: str) -> str:
        return f"{run_name}--confirm" + ("" if self.index == 1 else f"-{self.index}")


@dataclass
class ConfirmRequest:
    """One arm's confirmation: its best configuration and the recorder of its runs."""

    plan: ArmPlan
    setup: TrialSetup
    best_params: dict[str, Any]
    recorder: TrialRecorder


def _trainable(setups: dict[str, TrialSetup], data_ref: Any, seed: int, resources: Resources) -> Any:
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(tune_entry, setups=setups, data=data_ref, seed=seed), resources_dict(resources)
    )


def _run_config(name: str, storage: Path | str, callback: RecorderCallback, max_failures: int) -> Any:
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    return tune.RunConfig(
        name=name,
        storage_path=str(storage),
        # result.json per trial (Ray's ResultGrid and restore read it); the CSV and
        # TensorBoard loggers are off (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS)
        callbacks=[callback, JsonLoggerCallback()],
        failure_config=tune.FailureConfig(max_failures=max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        verbose=0,
        log_to_file=False,
    )


def _fit(
    recorders: list[TrialRecorder],
    trainable: Any,
    storage: Path | str,
    name: str,
    build: Callable[[RecorderCallback], Any],
    confirm_round: int | None,
) -> list[TrialRecord]:
    """Fit a new Tuner, or restore the interrupted one of the same experiment.

    Ray pickles our callback into the experiment; on restore, the new recorders are
    registered under the old callback's key (saved in each arm's run state, for the
    search or for round ``confirm_round``), so the restored callback reports to them.
    Trials that finished before the interruption come back from the run state.
    """
    import os

    from ray import tune

    # a failed trial's last result carries its reason, not the objectives (orchestrator.trial.faults)
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    path = f"{str(storage).rstrip('/')}/{name}"
    old_keys = {r.state.callback_key(r.arm, confirm_round) for r in recorders}
    old_key = old_keys.pop() if len(old_keys) == 1 else None
    if old_key and tune.Tuner.can_restore(path):
        callback = RecorderCallback(recorders, key=old_key)
        tuner = tune.Tuner.restore(
            path, trainable=trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
        )
    else:
        callback = RecorderCallback(recorders)
        for recorder in recorders:
            recorder.state.set_callback_key(recorder.arm, callback.key, confirm_round)
        tuner = build(callback)
    trackers = {id(recorder.tracker): recorder.tracker for recorder in recorders}.values()
    try:
        with contextlib.ExitStack() as background:
            for tracker in trackers:  # a server's writes off Tune's event loop (orchestrator.tracking)
                background.enter_context(tracker.writes_in_background())
            tuner.fit()
    finally:
        callback.release()
    return [record for recorder in recorders for record in recorder.all_records()]


def _same_point(point: dict[str, Any], params: dict[str, Any]) -> bool:
    return all(params.get(k) == v for k, v in point.items())


def _scheduler(plan: ArmPlan, epochs: int) -> Any:
    """Ray's ASHA, FIFO, or an Optuna pruner (``registry.SCHEDULERS``); with one epoch
    there is nothing to stop early."""
    from orchestrator.execute.pruning import build_scheduler

    return build_scheduler(plan.scheduler, plan.primary_metric, plan.primary_mode, epochs, plan.trials)


@dataclass
class SearchRequest:
    """One arm's search: its plan and setup, its recorder, and the finished trials of
    earlier runs it starts from (``orchestrator.execute.archive``)."""

    plan: ArmPlan
    setup: TrialSetup
    recorder: TrialRecorder
    prior: list[TrialRecord] = field(default_factory=list)

    @property
    def new_trials(self) -> int:
        return max(0, self.plan.trials - len(self.prior))


def run_searches(
    requests: list[SearchRequest], settings: SearchSettings, data_ref: Any, storage: Path | str, name: str
) -> dict[str, list[TrialRecord]]:
    """Every arm's hyperparameter search, in one Tuner (``by_arm``); returns the records
    of the trials run here, per arm.

    An arm with ``prior`` trials starts its sampler from them and runs only
    ``plan.trials - len(prior)`` new ones. Concurrency, resources, retries and the
    trials' seed are the run's ``settings``, the same for every arm.
    """
    if not requests or not any(r.new_trials for r in requests):
        return {r.setup.arm: [] for r in requests}
    from ray import tune

    from orchestrator.execute.by_arm import ArmScheduler, ArmSearcher
    from orchestrator.execute.searcher import HonestOptunaSearch

    trainable = _trainable({r.setup.arm: r.setup for r in requests}, data_ref, settings.seed, settings.resources)

    def searcher(r: SearchRequest) -> HonestOptunaSearch:
        metrics, modes = list(r.plan.objectives), list(r.plan.objectives.values())
        return HonestOptunaSearch(
            space=r.plan.space(),
            metric=metrics if len(metrics) > 1 else metrics[0],
            mode=modes if len(modes) > 1 else modes[0],
            sampler=build_sampler(r.plan.sampler),
            points_to_evaluate=[
                p for p in r.plan.points_to_evaluate if not any(_same_point(p, t.params) for t in r.prior)
            ]
            or None,
            constraints=r.plan.constraints,
            epochs=r.setup.training.epochs,
            on_suggest=r.recorder.suggested,
            prior_trials=r.prior,
        )

    def build(callback: RecorderCallback) -> Any:
        searchers = ArmSearcher(
            {r.setup.arm: searcher(r) for r in requests}, {r.setup.arm: r.new_trials for r in requests}
        )
        scheduler = ArmScheduler({r.setup.arm: _scheduler(r.plan, r.setup.training.epochs) for r in requests})
        return tune.Tuner(
            trainable,
            param_space={},
            tune_config=tune.TuneConfig(
                search_alg=searchers,
                scheduler=scheduler,
                num_samples=sum(r.new_trials for r in requests),
                max_concurrent_trials=settings.max_concurrent,
                # one worker process serves several trials, of any arm: no torch/transformers import per trial
                reuse_actors=True,
            ),
            run_config=_run_config(name, storage, callback, max_failures=settings.max_retries),
        )

    records = _fit([r.recorder for r in requests], trainable, storage, name, build, confirm_round=None)
    return {r.setup.arm: [record for record in records if record.arm == r.setup.arm] for r in requests}


def run_confirm(
    requests: list[ConfirmRequest],
    confirm_round: ConfirmRound,
    split: str,
    settings: SearchSettings,
    data_ref: Any,
    storage: Path | str,
    run_name: str,
) -> dict[str, list[TrialRecord]]:
    """One round of confirmation: each requested arm's best configuration again on the
    round's seeds, evaluated on ``split`` (the held-out test split unless the hypothesis
    says otherwise), in one Tuner: a trial per (arm, seed), with the search's resources,
    concurrency and retries (``settings``). Returns the records of the round's runs per arm."""
    from ray import tune

    if not requests:
        return {}
    setups = {
        r.setup.arm: replace(
            r.setup, fixed={**r.best_params, **r.setup.fixed}, final_split=split, confirm=True, constraints=()
        )
        for r in requests
    }
    seeds, name = confirm_round.seeds, confirm_round.experiment(run_name)
    trainable = _trainable(setups, data_ref, seeds[0], settings.resources)

    def build(callback: RecorderCallback) -> Any:
        return tune.Tuner(
            trainable,
            param_space={ARM_KEY: tune.grid_search(list(setups)), SEED_KEY: tune.grid_search(seeds)},
            tune_config=tune.TuneConfig(
                num_samples=1, max_concurrent_trials=settings.max_concurrent, reuse_actors=True
            ),
            run_config=_run_config(name, storage, callback, max_failures=settings.max_retries),
        )

    records = _fit([r.recorder for r in requests], trainable, storage, name, build, confirm_round=confirm_round.index)
    # the recorders also hold the runs of the arm's earlier rounds (from the run state)
    return {arm: [record for record in records if record.arm == arm and record.seed in seeds] for arm in setups}
