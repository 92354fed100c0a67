"""Does the cheap evidence of early epochs and stopped trials make a search cheaper?

    python benchmarks/samplers_fidelity.py [--samplers random,tpe,gp,botorch-final,botorch] \
        [--reps 10] [--budget 180] [--concurrency 1,4] [--plot docs/samplers_fidelity.png]

The objective is the LoRA surrogate of ``benchmarks/samplers.py`` (real trainings of
LoRA on ``random:bert-tiny`` / ``synthetic:polarity``), now epoch by epoch: its table
holds every training's validation accuracy after each of its 6 epochs, and between
measured learning rates each epoch's curve is a PCHIP in log10(lr), as the final one.

Every search runs under ASHA exactly as orchestrate configures it (grace 1, reduction
factor 2, ``max_t`` = 6 epochs: ``orchestrator.search.registry._asha``), through Ray's own
bracket bookkeeping (``ray.tune.schedulers.async_hyperband._Bracket``), and reports each
epoch to the Optuna trial as Ray's ``OptunaSearch.on_trial_result`` does; a stopped trial
is told PRUNED (``HonestOptunaSearch``). The cost is counted in **epochs trained**, the
budget likewise (180 = 30 full trainings). The score is the best *completed* trial's final
accuracy: a stopped trial's configuration was never trained to the end, so it is never
the winner.

``botorch`` is orchestrate's shipped sampler: every reported epoch of every trial
(complete, stopped or running) is an observation at fidelity ``epoch / 6``
(``orchestrator.search.botorch_sampler``). ``botorch-final`` is the same sampler fitted on
completed trials only (fidelity off), which is what ``gp`` does too; ``tpe`` ranks
stopped trials by their last report (Optuna's own rule).

With ``--concurrency`` c > 1, c trials train at once: every running trial trains one
epoch per step, a freed slot asks at once, so suggestions see ``c - 1`` running trials
and their partial curves.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from sampler_bench import label, panels_by_concurrency  # noqa: E402
from samplers import GRID_ALPHA, GRID_R, read_table, space_params  # noqa: E402

#: ``python benchmarks/samplers.py collect --out benchmarks/surrogate_curves.csv``: the LoRA
#: grid again (2026-11-30), every epoch's accuracy kept, the training defaults of
#: surrogate_table.csv pinned; its final accuracies equal that table's in the 70 rows with
#: lr <= 0.01 (the optimum among them), and differ in 35 of the 45 rows with lr >= 0.0215,
#: where training diverges and float-level differences grow over 114 steps.
TABLE = HERE / "surrogate_curves.csv"

EPOCHS = 6


class CurveSurrogate:
    """val_accuracy(r, lora_alpha, lr, epoch) from the measured per-epoch table."""

    def __init__(self, rows: list[dict]) -> None:
        from scipy.interpolate import PchipInterpolator

        rows = [row for row in rows if len(row["epochs"]) == EPOCHS]
        cells: dict[tuple[int, int], list[tuple[float, list[float]]]] = {}
        for row in rows:
            cells.setdefault((row["r"], row["lora_alpha"]), []).append((math.log10(row["lr"]), row["epochs"]))
        missing = [(r, a) for r in GRID_R for a in GRID_ALPHA if len(cells.get((r, a), [])) < 2]
        if missing:
            raise SystemExit(
                f"the table has no per-epoch columns for {missing}: run `python benchmarks/samplers.py collect`"
            )
        self.curves = {}
        for key, points in cells.items():
            points.sort()
            xs = [p[0] for p in points]
            self.curves[key] = [
                PchipInterpolator(xs, [p[1][e] for p in points], extrapolate=False) for e in range(EPOCHS)
            ]
        self.lr_range = (min(row["lr"] for row in rows), max(row["lr"] for row in rows))
        self.best = max(row["epochs"][-1] for row in rows)

    def __call__(self, r: int, lora_alpha: int, lr: float, epoch: int) -> float:
        x = min(max(math.log10(lr), math.log10(self.lr_range[0])), math.log10(self.lr_range[1]))
        return float(self.curves[(r, lora_alpha)][epoch - 1](x))


@dataclass
class Running:
    trial: object
    trial_id: str  # what Ray's bracket keys on
    epoch: int = 0


@dataclass
class Search:
    """One search's record: (epochs spent so far, final value) of each completed trial."""

    completed: list[tuple[int, float]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    trials: int = 0
    stopped: int = 0

    def best_after(self, epochs: int) -> float:
        values = [value for spent, value in self.completed if spent <= epochs]
        return max(values) if values else float("nan")

    def epochs_to_reach(self, target: float, budget: int) -> int | None:
        """Epochs spent when a completed trial first reached ``target`` (None: not within ``budget``)."""
        for spent, value in sorted(self.completed):
            if spent > budget:
                return None
            if value >= target - 1e-12:
                return spent
        return None


def make_sampler(name: str, seed: int, trials: int):
    from orchestrator.search.samplers import SamplerPlan, build_sampler, default_startup_trials

    base = "botorch" if name == "botorch-final" else name
    # the plan's epochs: the shipped botorch reads the learning curves, botorch-final does not
    plan = SamplerPlan(base, seed, default_startup_trials(base, trials), 1, epochs=EPOCHS if name == "botorch" else 1)
    return build_sampler(plan)


def one_search(name: str, seed: int, budget: int, objective: CurveSurrogate, concurrency: int) -> Search:
    import optuna
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.schedulers.async_hyperband import _Bracket

    from orchestrator.search.samplers import limited_threads
    from orchestrator.search.space import DefineByRun

    space = DefineByRun(space_params(), {})
    study = optuna.create_study(direction="maximize", sampler=make_sampler(name, seed, budget // EPOCHS))
    bracket = _Bracket(min_t=1, max_t=EPOCHS, reduction_factor=2, s=0)  # orchestrate's ASHA
    record = Search()
    running: list[Running] = []
    spent = 0
    while True:
        while len(running) < concurrency and spent < budget:
            started = time.perf_counter()
            with limited_threads(1):  # as HonestOptunaSearch.suggest
                trial = study.ask()
                space(trial)
            record.seconds.append(time.perf_counter() - started)
            running.append(Running(trial, f"t{record.trials}"))
            record.trials += 1
        if not running:
            return record
        for item in list(running):  # every running trial trains one epoch
            item.epoch += 1
            spent += 1
            value = objective(**item.trial.params, epoch=item.epoch)
            item.trial.report(value, item.epoch)
            if item.epoch >= EPOCHS:
                study.tell(item.trial, value)
                record.completed.append((spent, value))
                running.remove(item)
            elif bracket.on_result(item, item.epoch, value) == TrialScheduler.STOP:
                study.tell(item.trial, state=optuna.trial.TrialState.PRUNED)
                record.stopped += 1
                running.remove(item)


def markdown_table(results: dict[str, list[Search]], best: float, budget: int) -> str:
    half = budget // 2
    lines = [
        f"| sampler | reps | epochs to 99% of best: median (runs reaching) | mean best after {half} epochs | "
        f"mean best after {budget} (sd) | trials started / stopped by ASHA (mean) | suggestion s: p50 / p95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        hits = [run.epochs_to_reach(0.99 * best, budget) for run in runs]
        censored = sorted(h if h is not None else budget + 1 for h in hits)
        median = float(np.median(censored))
        reach = f"> {budget}" if median > budget else f"{median:g}"
        finals = np.array([run.best_after(budget) for run in runs])
        halves = np.array([run.best_after(half) for run in runs])
        seconds = np.concatenate([run.seconds for run in runs])
        lines.append(
            f"| {name} | {len(runs)} | {reach} ({sum(h is not None for h in hits)}/{len(runs)}) | "
            f"{np.nanmean(halves):.4f} | {np.nanmean(finals):.4f} ({np.nanstd(finals, ddof=1):.4f}) | "
            f"{np.mean([r.trials for r in runs]):.1f} / {np.mean([r.stopped for r in runs]):.1f} | "
            f"{np.median(seconds):.3f} / {np.percentile(seconds, 95):.3f} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, list[Search]], best: float, budget: int, path: Path) -> None:
    with panels_by_concurrency(results, path) as axes:
        epochs = np.arange(EPOCHS, budget + 1)
        for ax, title, panel in axes:
            for name, runs in panel.items():
                curves = np.array([[run.best_after(e) for e in epochs] for run in runs])
                mean = np.nanmean(curves, axis=0)
                ax.plot(epochs, mean, label=f"{name.partition(' (')[0]} (n={len(runs)})")
            ax.axhline(best, color="black", lw=0.8, ls=":", label=f"best measured ({best:.3f})")
            ax.axhline(0.99 * best, color="grey", lw=0.8, ls="--", label="99% of best")
            ax.set_xlabel("epochs trained (cost)")
            ax.set_ylabel("best completed val_accuracy (mean over seeds)")
            ax.set_title(f"{title}, ASHA (grace 1, rf 2, 6 epochs): LoRA surrogate", fontsize=9)
            ax.legend(fontsize=8, loc="lower right")
            ax.grid(alpha=0.3)


def main(argv: list[str] | None = None) -> None:
    import warnings

    import optuna

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", default="random,tpe,gp,botorch-final,botorch")
    parser.add_argument("--reps", type=int, default=10, help="seeds 0..reps-1 per sampler")
    parser.add_argument("--budget", type=int, default=180, help="epochs per search (6 per full trial)")
    parser.add_argument("--concurrency", default="1,4", help="trials training at once")
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    objective = CurveSurrogate(read_table(args.table))
    load, started = os.getloadavg(), time.perf_counter()
    print(f"best final accuracy {objective.best:.4f}; 99% = {0.99 * objective.best:.4f}; budget {args.budget} epochs")
    print(f"load average before: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    results: dict[str, list[Search]] = {}
    for concurrency in (int(c) for c in args.concurrency.split(",")):
        for name in args.samplers.split(","):
            for seed in range(args.reps):
                run = one_search(name, seed, args.budget, objective, concurrency)
                results.setdefault(label(name, concurrency), []).append(run)
                print(
                    f"{label(name, concurrency):26} seed {seed:2}: best {run.best_after(10**9):.4f}, "
                    f"epochs to 99% {run.epochs_to_reach(0.99 * objective.best, args.budget)}, "
                    f"{run.trials} trials ({run.stopped} stopped), p50 ask {np.median(run.seconds):.3f} s",
                    flush=True,
                )
    load, total = os.getloadavg(), time.perf_counter() - started
    print(f"\nload average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; total {total:.0f} s\n")
    print(markdown_table(results, objective.best, args.budget))
    if args.plot:
        plot(results, objective.best, args.budget, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
