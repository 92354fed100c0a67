"""Orchestration overhead: the same trivial-trainable search through orchestrate's
execution layer and through raw Ray Tune + OptunaSearch(TPE). Prints the wall-time ratio
(target <= 1.10). Both run in one process, one after the other, on the same Ray instance.

    python benchmarks/overhead.py [--trials 20] [--concurrent 2] [--epochs 3]

"orchestrate" here is everything between the plan and the trainable: HonestOptunaSearch
(constraints, PRUNED), the MLflow recorder (a run per trial, params, per-epoch metrics),
run state persisted per trial, ASHA, progress bookkeeping. The trainable itself is
replaced by the same trivial function in both, so only the overhead differs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from orchestrator.execute.ray_session import prepare_ray_environment

prepare_ray_environment()


def trivial(config, epochs: int = 3, **_):
    from ray import tune

    for epoch in range(1, epochs + 1):
        tune.report({"epoch": epoch, "val_accuracy": 1.0 - (config["lr"] - 0.01) ** 2 / epoch})


def trivial_entry(config, setups, data, seed):
    trivial(config, next(iter(setups.values())).training.epochs)


def run_raw(trials: int, concurrent: int, epochs: int, storage: str, reuse: bool = False) -> float:
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    started = time.perf_counter()
    searcher = OptunaSearch(metric="val_accuracy", mode="max", sampler=optuna.samplers.TPESampler(seed=0))
    tuner = tune.Tuner(
        tune.with_parameters(trivial, epochs=epochs),
        param_space={"lr": tune.loguniform(1e-4, 1e-1)},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=trials,
            max_concurrent_trials=concurrent,
            scheduler=ASHAScheduler(metric="val_accuracy", mode="max", max_t=epochs, grace_period=1),
            reuse_actors=reuse,
        ),
        run_config=tune.RunConfig(name="raw", storage_path=storage, verbose=0),
    )
    tuner.fit()
    return time.perf_counter() - started


def run_orchestrate(trials: int, concurrent: int, epochs: int, folder: Path) -> float:
    import orchestrator.execute.tuning as tuning
    from orchestrator.execute.progress import Progress
    from orchestrator.execute.recorder import TrialRecorder
    from orchestrator.execute.state import RunState
    from orchestrator.plan import ArmPlan, SearchSettings
    from orchestrator.search.samplers import SamplerPlan
    from orchestrator.search.space import ParamSpec
    from orchestrator.spec.models import Resources, TrainingSpec
    from orchestrator.tracking import Tracker
    from orchestrator.trial.training import TrialSetup

    tuning.tune_entry = trivial_entry  # the only difference from a real run: no training
    started = time.perf_counter()
    tracker = Tracker(f"sqlite:///{folder}/mlflow.db")
    experiment = tracker.experiment_id("overhead")
    parent = tracker.start_run(experiment, "overhead", {"orchestrate.level": "hypothesis"})
    arm_run = tracker.start_run(experiment, "arm", {"orchestrate.level": "arm"}, parent)
    plan = ArmPlan(
        arm="a",
        method="lora",
        routed=False,
        space_file=None,
        params={"lr": ParamSpec(type="float", low=1e-4, high=1e-1, log=True)},
        fixed={},
        points_to_evaluate=[],
        sampler=SamplerPlan("tpe", 0, 10, 1),
        objectives={"val_accuracy": "max"},
        constraints=[],
        scheduler="asha",
        trials=trials,
    )
    settings = SearchSettings(
        seed=0,
        max_concurrent=concurrent,
        resources=Resources(cpu=1),
        max_retries=1,
        trial_timeout_s=None,
        trial_memory_mb=None,
        reuse_trials=False,
    )
    setup = TrialSetup(
        arm="a", method="lora", model="random:bert-tiny", metric="accuracy", training=TrainingSpec(epochs=epochs)
    )
    state = RunState.open(folder / "state", "overhead", "default", "x", fresh=True)
    progress = Progress(quiet=True)
    recorder = TrialRecorder(
        tracker,
        experiment,
        arm_run,
        "a",
        "trial",
        epochs,
        [],
        state,
        progress.arm("a", "search", trials, "val_accuracy", "max"),
        {},
        ["lr"],
    )
    records = tuning.run_searches(
        [tuning.SearchRequest(plan, setup, recorder)], settings, None, str(folder / "ray"), "orchestrate"
    )["a"]
    assert len(records) == trials, len(records)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=args.concurrent, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run_raw(2, args.concurrent, args.epochs, str(folder / "warm"))  # warm both paths' imports
        raw = run_raw(args.trials, args.concurrent, args.epochs, str(folder / "raw"))
        raw_reuse = run_raw(args.trials, args.concurrent, args.epochs, str(folder / "raw-reuse"), reuse=True)
        ours = run_orchestrate(args.trials, args.concurrent, args.epochs, folder)
    ray.shutdown()
    print(f"trials={args.trials} concurrent={args.concurrent} epochs={args.epochs}")
    print(f"raw Ray Tune + OptunaSearch(TPE): {raw:.1f} s ({raw / args.trials:.2f} s per trial)")
    print(f"orchestrate (searcher + MLflow recorder + state): {ours:.1f} s ({ours / args.trials:.2f} s per trial)")
    print(
        f"raw Ray Tune + OptunaSearch(TPE), reuse_actors=True: {raw_reuse:.1f} s "
        f"({raw_reuse / args.trials:.2f} s per trial)"
    )
    print(f"ratio orchestrate / raw (Ray's defaults) = {ours / raw:.3f} (target <= 1.10)")
    print(f"ratio orchestrate / raw with reuse_actors = {ours / raw_reuse:.3f} (the cost of our layer alone)")


if __name__ == "__main__":
    main()
