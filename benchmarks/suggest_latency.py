"""Suggestion (ask) latency of the model-based samplers, as orchestrate builds and calls them.

    python benchmarks/suggest_latency.py [--samplers botorch,gp,tpe] [--completed 10,40,100] [--asks 5] [--pending 3]

For each sampler, each history size N (completed trials) and each scenario:

- ``single``: one objective (val_accuracy, max);
- ``multi``: two objectives (val_accuracy max, flops_ratio min) and one constraint
  (``flops_ratio <= 1``) set with ``trial.set_constraint`` before ``tell``, as
  ``HonestOptunaSearch`` does;
- ``curves``: one objective, as ASHA leaves a 6-epoch search: every trial reported each
  epoch it trained, half of the N finished trials were stopped after 1 or 2 epochs
  (PRUNED), the pending ones are at epoch 1; the sampler is told the 6 epochs
  (``SamplerPlan.epochs``), so ``botorch`` fits every epoch as low-fidelity evidence;

a study is filled with N completed trials (random configurations of the shipped LoRA space,
search_spaces/lora.yaml: r and lora_alpha categorical, lr log-float, lora_dropout stepped
float; a smooth toy response) and ``--pending`` more trials left RUNNING with their
parameters chosen (what 4 concurrent trials leave while a fourth is asked for: the samplers
take them as pending points), then the sampler built by
``orchestrator.search.samplers.build_sampler(SamplerPlan(...))`` takes over and is asked ``--asks``
times. An ask is what ``OptunaSearch.suggest`` does: ``study.ask()`` plus every parameter's
suggestion (the relative sample is computed lazily at the first one). Each asked trial is
told FAIL, so the history stays at N completed trials. Each cell is timed in three thread
modes: ``shipped`` (inside ``limited_threads(1)``, as ``HonestOptunaSearch.suggest``),
``blas1`` (that, plus threadpoolctl limiting every loaded BLAS pool to one thread: setting
OMP_NUM_THREADS at run time does not reach an OpenBLAS that scipy has already loaded) and
``default`` (neither).

Prints p50 and p95 wall seconds per cell and the p50 of process CPU seconds (less sensitive
to other jobs on the machine), the load average before and after, and the target: BoTorch
p50 <= 1 s at 40 completed trials (with 3 pending). Default run: ~5 minutes on a busy 2-core machine (load ~6);
``--default-at all`` times the unlimited mode at every N too (~18 minutes there).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCENARIOS = {
    "single": (["val_accuracy"], ["maximize"], False),
    "multi": (["val_accuracy", "flops_ratio"], ["maximize", "minimize"], True),
    "curves": (["val_accuracy"], ["maximize"], False),
}
CURVE_EPOCHS = 6
CONSTRAINT = "flops_ratio <= 1"
TARGET_S = 1.0


def lora_space():
    import yaml

    from orchestrator.search.space import DefineByRun, SpaceFile

    space = SpaceFile(**yaml.safe_load((ROOT / "search_spaces" / "lora.yaml").read_text()))
    return DefineByRun(space.params, {})


def toy_response(params: dict, rng: np.random.Generator) -> tuple[float, float]:
    """A smooth LoRA-like response: accuracy peaks at lr ~1e-3 and grows slowly with r."""
    lr, r = params["lr"], params["r"]
    accuracy = 0.85 - 0.04 * (math.log10(lr) + 3.0) ** 2 + 0.01 * math.log2(r) - 0.05 * params["lora_dropout"]
    accuracy += 0.01 * math.log2(params["lora_alpha"] / 16) * 0.5 + rng.normal(0, 0.005)
    flops_ratio = r / 8
    return accuracy, flops_ratio


def filled_study(scenario: str, completed: int, pending: int, seed: int):
    import optuna

    names, directions, constrained = SCENARIOS[scenario]
    space = lora_space()
    study = optuna.create_study(directions=directions, sampler=optuna.samplers.RandomSampler(seed=seed))
    rng = np.random.default_rng(seed)
    curves = scenario == "curves"
    for i in range(completed):
        trial = study.ask()
        space(trial)
        accuracy, flops_ratio = toy_response(trial.params, rng)
        if constrained:
            trial.set_constraint(CONSTRAINT, flops_ratio - 1.0)
        if not curves:
            study.tell(trial, [accuracy, flops_ratio][: len(names)])
            continue
        trained = CURVE_EPOCHS if i % 2 == 0 else 1 + i % 4 // 2  # half stopped after 1 or 2 epochs
        for epoch in range(1, trained + 1):
            trial.report(accuracy * (1 - 0.5**epoch), epoch)
        if trained == CURVE_EPOCHS:
            study.tell(trial, accuracy)
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    for _ in range(pending):  # running: parameters chosen, no value yet (with curves: one epoch)
        trial = study.ask()
        space(trial)
        if curves:
            trial.report(0.5 * toy_response(trial.params, rng)[0], 1)
    return study, space


@contextlib.contextmanager
def thread_mode(mode: str) -> Iterator[None]:
    """``shipped``: orchestrate's ``limited_threads(1)``; ``blas1``: that plus every loaded
    BLAS/OpenMP pool limited with threadpoolctl (OMP_NUM_THREADS set at run time does not
    reach an OpenBLAS that is already loaded); ``default``: neither."""
    from orchestrator.search.samplers import limited_threads

    if mode == "default":
        yield
        return
    with limited_threads(1):
        if mode == "blas1":
            import scipy.optimize  # noqa: F401  (load scipy's OpenBLAS before limiting it)
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=1):
                yield
        else:
            yield


def time_asks(
    sampler_name: str, scenario: str, completed: int, pending: int, asks: int, mode: str, seed: int = 0
) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) of each ask."""
    import optuna

    from orchestrator.search.samplers import SamplerPlan, build_sampler, default_startup_trials

    names, _, _ = SCENARIOS[scenario]
    study, space = filled_study(scenario, completed, pending, seed)
    # The planner's rule for a 40-trial search: 10 startup trials, so every N here is past them.
    base_name = "botorch-legacy" if sampler_name == "botorch-default" else sampler_name
    epochs = CURVE_EPOCHS if scenario == "curves" else 1
    plan = SamplerPlan(base_name, seed, default_startup_trials(base_name, 40), len(names), epochs=epochs)
    study.sampler = build_sampler(plan)
    if sampler_name == "botorch-default":  # before: optuna-integration's own candidates function and budget
        study.sampler._candidates_func = None
        study.sampler._consider_running_trials = False
    wall, cpu = [], []
    for _ in range(asks):
        started, started_cpu = time.perf_counter(), time.process_time()
        with thread_mode(mode):
            trial = study.ask()
            space(trial)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return wall, cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="p50/p95 suggestion latency of botorch, gp and tpe")
    parser.add_argument(
        "--samplers",
        default="botorch,gp,tpe",
        help="also: botorch-legacy, botorch-default (optuna-integration's candidates)",
    )
    parser.add_argument("--completed", default="10,40,100", help="history sizes (completed trials)")
    parser.add_argument("--scenarios", default="single,multi,curves")
    parser.add_argument("--asks", type=int, default=5, help="timed asks per cell (tpe gets 4x as many)")
    parser.add_argument("--pending", type=int, default=3, help="trials left RUNNING (pending points) during every ask")
    parser.add_argument("--modes", default="shipped,blas1,default", help="thread modes: shipped, blas1, default")
    parser.add_argument(
        "--default-at",
        default="40",
        help="history sizes at which the slow 'default' mode is timed ('all' for every one)",
    )
    parser.add_argument(
        "--no-warmup", action="store_true", help="skip the untimed first ask per sampler (imports, setup)"
    )
    args = parser.parse_args(argv)

    import warnings

    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    load_before = os.getloadavg()
    started = time.perf_counter()
    samplers = args.samplers.split(",")
    for name in [] if args.no_warmup else samplers:
        time_asks(name, "single", 12, args.pending, 1, "shipped")  # imports and first-call setup, untimed
    rows = []
    print(
        f"cores: {os.cpu_count()}, torch threads by default: {torch.get_num_threads()}, "
        f"load average (1/5/15 min): {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f}; "
        f"pending trials: {args.pending}"
    )
    print("threads: shipped = limited_threads(1); blas1 = shipped + threadpoolctl limits(1); default = neither")
    print(
        f"{'sampler':15} {'scenario':8} {'N':>4} {'threads':>8} {'asks':>4} "
        f"{'p50 s':>7} {'p95 s':>7} {'max s':>7} {'cpu p50':>8}"
    )
    for scenario in args.scenarios.split(","):
        for sampler_name in samplers:
            for completed in (int(n) for n in args.completed.split(",")):
                for mode in args.modes.split(","):
                    if (
                        mode == "default"
                        and args.default_at != "all"
                        and str(completed) not in args.default_at.split(",")
                    ):
                        continue  # without a thread limit a BoTorch ask takes 15-60 s on a busy 2-core machine
                    asks = args.asks * (4 if sampler_name == "tpe" else 1)
                    wall, cpu = (
                        np.array(x) for x in time_asks(sampler_name, scenario, completed, args.pending, asks, mode)
                    )
                    p50, p95 = np.percentile(wall, 50), np.percentile(wall, 95)
                    rows.append((sampler_name, scenario, completed, mode, p50, p95))
                    print(
                        f"{sampler_name:15} {scenario:8} {completed:>4} {mode:>8} {asks:>4} {p50:>7.3f} {p95:>7.3f} "
                        f"{wall.max():>7.3f} {np.percentile(cpu, 50):>8.3f}",
                        flush=True,
                    )
    load_after = os.getloadavg()
    print(
        f"load average after: {load_after[0]:.1f} {load_after[1]:.1f} {load_after[2]:.1f}; "
        f"total {time.perf_counter() - started:.0f} s"
    )
    for sampler_name, scenario, completed, mode, p50, _ in rows:
        if sampler_name == "botorch" and completed == 40 and mode == "shipped":
            verdict = "meets" if p50 <= TARGET_S else "MISSES"
            print(
                f"target: botorch {scenario} p50 at 40 trials, {args.pending} pending = "
                f"{p50:.3f} s ({verdict} <= {TARGET_S} s)"
            )


if __name__ == "__main__":
    main()
