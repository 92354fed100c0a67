"""Run trials through Ray Tune: one Tuner per arm's search, then one Tuner for the
confirmation runs of every arm.

Only this module builds ``Tuner`` objects. Ray Tune owns scheduling, resources,
retries and distribution; we pass it a searcher, a scheduler and a recorder.

Why one confirmation Tuner for all arms: a Tuner starts its own worker processes, and
each one imports torch, transformers and peft (about 10 s of CPU on a small machine)
before its first trial. The searches need a Tuner each (their own searcher and
scheduler); the confirmation runs do not, so with ``reuse_actors`` the same workers
serve every arm's seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from orchestrator.execute.recorder import RecorderCallback, TrialRecorder
from orchestrator.plan import ArmPlan
from orchestrator.results import TrialRecord
from orchestrator.samplers import build_sampler
from orchestrator.spec.models import Resources
from orchestrator.trainable import ARM_KEY, SEED_KEY, tune_entry
from orchestrator.training import TrialSetup


def resources_dict(resources: Resources) -> dict[str, float]:
    out: dict[str, float] = {"cpu": resources.cpu, "gpu": resources.gpu}
    if resources.memory_gb:
        out["memory"] = resources.memory_gb * 2**30
    out.update(resources.custom)
    return out


@dataclass
class ConfirmRequest:
    """One arm's confirmation: its best configuration and the recorder of its runs."""

    plan: ArmPlan
    setup: TrialSetup
    best_params: dict[str, Any]
    recorder: TrialRecorder


def _trainable(setups: dict[str, TrialSetup], data_ref: Any, seed: int, resources: Resources) -> Any:
    from ray import tune

    return tune.with_resources(tune.with_parameters(tune_entry, setups=setups, data=data_ref, seed=seed), resources_dict(resources))


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


def _fit(recorders: list[TrialRecorder], trainable: Any, storage: Path | str, name: str, build: Callable[[RecorderCallback], Any]) -> list[TrialRecord]:
    """Fit a new Tuner, or restore the interrupted one of the same experiment.

    Ray pickles our callback into the experiment; on restore, the new recorders are
    registered under the old callback's key (saved in each arm's run state), so the
    restored callback reports to them. Trials that finished before the interruption
    come back from the run state.
    """
    import os

    from ray import tune

    # a failed trial's last result carries its reason, not the objectives (orchestrator.faults)
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    path = f"{str(storage).rstrip('/')}/{name}"
    key_name = f"{recorders[0].kind}_callback_key"
    old_keys = {r.state.arm(r.arm).get(key_name) for r in recorders}
    old_key = old_keys.pop() if len(old_keys) == 1 else None
    if old_key and tune.Tuner.can_restore(path):
        callback = RecorderCallback(recorders, key=old_key)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False, restart_errored=False)
    else:
        callback = RecorderCallback(recorders)
        for recorder in recorders:
            recorder.state.set_arm(recorder.arm, **{key_name: callback.key})
        tuner = build(callback)
    try:
        tuner.fit()
    finally:
        callback.release()
    return [record for recorder in recorders for record in recorder.all_records()]


def _same_point(point: dict[str, Any], params: dict[str, Any]) -> bool:
    return all(params.get(k) == v for k, v in point.items())


def _scheduler(plan: ArmPlan, epochs: int) -> Any:
    """Ray's ASHA, FIFO, or an Optuna pruner; with one epoch there is nothing to stop early."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from orchestrator.pruning import PRUNERS, OptunaPrunerScheduler

    if epochs <= 1 or plan.scheduler == "fifo":
        return FIFOScheduler()
    if plan.scheduler in PRUNERS:
        return OptunaPrunerScheduler(plan.scheduler, plan.primary_metric, plan.primary_mode, epochs, plan.trials)
    return ASHAScheduler(
        metric=plan.primary_metric, mode=plan.primary_mode, time_attr="training_iteration",
        max_t=epochs, grace_period=1, reduction_factor=2,
    )


def run_search(plan: ArmPlan, setup: TrialSetup, data_ref: Any, recorder: TrialRecorder, storage: Path | str, name: str, seed: int,
               prior: list[TrialRecord] | None = None) -> list[TrialRecord]:
    """The arm's hyperparameter search; returns a record per trial run here.

    ``prior``: finished trials of an earlier search with the same identity; the
    sampler starts from them and only ``plan.trials - len(prior)`` new trials run.
    """
    prior = list(prior or [])
    if len(prior) >= plan.trials:
        return []
    from ray import tune

    from orchestrator.searcher import HonestOptunaSearch

    epochs = setup.training.epochs
    trainable = _trainable({setup.arm: setup}, data_ref, seed, plan.resources)

    def build(callback: RecorderCallback) -> Any:
        metrics, modes = list(plan.objectives), list(plan.objectives.values())
        searcher = HonestOptunaSearch(
            space=plan.space(),
            metric=metrics if len(metrics) > 1 else metrics[0],
            mode=modes if len(modes) > 1 else modes[0],
            sampler=build_sampler(plan.sampler),
            points_to_evaluate=[p for p in plan.points_to_evaluate if not any(_same_point(p, r.params) for r in prior)] or None,
            constraints=plan.constraints,
            epochs=epochs,
            on_suggest=recorder.suggested,
            prior_trials=prior,
        )
        scheduler = _scheduler(plan, epochs)
        return tune.Tuner(
            trainable,
            param_space={},
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=plan.trials - len(prior),
                max_concurrent_trials=plan.max_concurrent,
                # one worker process serves several trials: no torch/transformers import per trial
                reuse_actors=True,
            ),
            run_config=_run_config(name, storage, callback, max_failures=plan.max_retries),
        )

    return _fit([recorder], trainable, storage, name, build)


def run_confirm(requests: list[ConfirmRequest], seeds: list[int], split: str, data_ref: Any, storage: Path | str, name: str) -> dict[str, list[TrialRecord]]:
    """Every arm's best configuration again on fresh seeds, evaluated on ``split`` (the
    held-out test split unless the hypothesis says otherwise), in one Tuner: a trial
    per (arm, seed). Returns the records per arm."""
    from ray import tune

    if not requests:
        return {}
    setups = {
        r.setup.arm: replace(r.setup, fixed={**r.best_params, **r.setup.fixed}, final_split=split, confirm=True, constraints=())
        for r in requests
    }
    plan = requests[0].plan  # concurrency, resources and retries are the hypothesis's, the same for every arm
    trainable = _trainable(setups, data_ref, seeds[0], plan.resources)

    def build(callback: RecorderCallback) -> Any:
        return tune.Tuner(
            trainable,
            param_space={ARM_KEY: tune.grid_search(list(setups)), SEED_KEY: tune.grid_search(seeds)},
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=plan.max_concurrent, reuse_actors=True),
            run_config=_run_config(name, storage, callback, max_failures=plan.max_retries),
        )

    records = _fit([r.recorder for r in requests], trainable, storage, name, build)
    return {arm: [record for record in records if record.arm == arm] for arm in setups}
