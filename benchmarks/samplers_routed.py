"""Which sampler for a two-objective constrained search? A surrogate of real RAD-LoRA trials.

    python benchmarks/samplers_routed.py collect   # 90 real RAD-LoRA trainings -> routed_table.csv
    python benchmarks/samplers_routed.py [--samplers random,tpe,gp,nsga2,botorch-legacy,botorch] \
        [--reps 10] [--trials 30] [--concurrency 1,4] [--plot docs/samplers_routed.png] [--json FILE]

(``--concurrency 1,4``, every sampler, 10 seeds: 843 s on the shared 2-core machine.)

The case of ``hypotheses/radlora.yaml``: maximise ``val_accuracy``, minimise
``flops_ratio`` (adapter FLOPs, routers included, over unmerged LoRA-r8), subject to
``flops_ratio <= 0.25``. ``collect`` runs ``orchestrator.trial.training.run_trial``
(method ``radlora``) on the task of ``benchmarks/samplers.py``'s LoRA table (a randomly
initialised 2-layer BERT, hidden 32, on ``synthetic:polarity``; 6 epochs, batch 16, seed 0,
one thread; the rest of ``TRAINING`` pinned as measured) over a grid of (r_max, lr,
target_rho) with ``cost: dual``; every other parameter is ``search_spaces/radlora.yaml``'s
default (``FIXED``). A training takes ~5.5 s here (median of the 90; 624 s in all).

**Pilot** (2026-11-30, single trainings, 5.6-10.6 s each; lr, target_rho, r_max ->
val_accuracy, flops_ratio): the yaml defaults (2e-3, 0.18, 8) -> 0.563 (the majority
class: every collapsed run reports 0.5633), 0.202; (1e-2, 0.05, 8) -> 0.563, 0.077 (all
blocks off: 0.077 is the routers alone); (1e-2, 0.5, 8) -> 0.707, 0.638; (1e-2, 1.0, 8)
-> 0.767, 0.558; (2e-2, 0.2, 8) -> 0.693, 0.219; (1e-2, 0.2, 4) -> 0.700, 0.198;
(2e-2, 0.15, 16) -> 0.563, 0.086 (collapsed shut); (5e-2, 0.3, 8) -> 0.567, 0.389;
(3e-2, 0.1, 8) -> 0.450, 0.081. So target_rho is the knob that moves flops_ratio
(about rho * r_max / 8 plus ~0.08 of routers), the 0.25 bound cuts through the
target_rho range for every r_max (near rho 0.35 at r_max 4, 0.2 at 8, 0.08 at 16),
accuracy rises with the budget, and the learning rate decides whether a run learns at
all. Hence the grid: r_max {4, 8, 16} x lr {3e-3 .. 4.8e-2, x2 steps} x target_rho
{0.05, 0.1, 0.15, 0.2, 0.3, 0.5} = 90 trainings.

**The surrogate** interpolates both outcomes per r_max cell, bilinearly in
(log10 lr, target_rho) (scipy ``RegularGridInterpolator``, ``method="linear"``), with
parameters clipped to the grid (no extrapolation). It is exact at every measured
point, and at any other point both outcomes are the SAME convex combination of the four
surrounding measured configurations' outcomes: the surrogate never reports an accuracy
above, or a FLOPs ratio below, what a neighbouring real training measured, and it never
pairs one neighbour's accuracy with another's cost. Its feasible Pareto front may still
pass slightly beyond the measured front (between two measured trade-offs lie their
mixtures), so the normaliser is the front of the surrogate itself, on a dense grid that
contains every measured point: a normalised hypervolume of 1.0 is the best any search
can reach here; the table's own front is printed beside it.

**The score** is the hypervolume of the FEASIBLE trials' Pareto front (a trial with
``flops_ratio > 0.25`` never counts) after 10, 20 and 30 trials, with the reference point
(val_accuracy = 0.5633, the majority-class rate of the 300 validation examples;
flops_ratio = 0.25, the constraint), computed by BoTorch's public ``Hypervolume``. Every
sampler runs seeds 0..reps-1, is built by ``build_sampler`` (the planner's startup rule),
is asked under ``limited_threads(1)`` and is told the constraint with
``trial.set_constraint`` before ``tell``, as ``orchestrator.execute.searcher`` does.
"""

from __future__ import annotations

import argparse
import collections
import csv
import datetime
import functools
import itertools
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from sampler_bench import commit, keep_accuracy, label, panels_by_concurrency  # noqa: E402

from orchestrator.spec.constraints import parse_constraint  # noqa: E402

TABLE = HERE / "routed_table.csv"
#: The task of ``benchmarks/samplers.py``'s LoRA table.
TASK = dict(model="random:bert-tiny", dataset="synthetic:polarity", max_length=32, val_examples=300)
#: Every training setting the table was measured with, pinned (TrainingSpec's defaults on
#: 2026-11-30; precision auto ran fp32 on this CPU, which has no native bf16). The LoRA
#: table pins older defaults (warmup_ratio 0.06, group_by_length off).
TRAINING: dict[str, Any] = dict(epochs=6, batch_size=16, warmup_ratio=0.2, group_by_length=True, precision="fp32")
SEED = 0
GRID_R_MAX = [4, 8, 16]
GRID_LR = [0.003, 0.006, 0.012, 0.024, 0.048]
GRID_RHO = [0.05, 0.1, 0.15, 0.2, 0.3, 0.5]
#: search_spaces/radlora.yaml's defaults (2026-11-30) for everything not in the grid.
FIXED = dict(cost="dual", dual_lr=0.5, gate_threshold=0.5, tau_end=0.1, warmup_fraction=0.2, router_hidden=16)
CONSTRAINT = parse_constraint("flops_ratio <= 0.25")
#: The majority-class rate of the validation split (169 / 300): what a collapsed run reports.
REF_ACCURACY = 0.563333
CHECKPOINTS = (10, 20, 30)
EPOCHS = int(TRAINING["epochs"])


# --------------------------------------------------------------------------- collect
def _grid_order() -> list[tuple[int, float, float]]:
    """Every other lr first (3e-3, 1.2e-2, 4.8e-2), so a partial table still spans the range."""
    coarse = GRID_LR[::2]
    lrs = coarse + [lr for lr in GRID_LR if lr not in coarse]
    return [(r, lr, rho) for lr in lrs for r in GRID_R_MAX for rho in GRID_RHO]


def _key(r_max: int, lr: float, target_rho: float) -> tuple[int, float, float]:
    return (int(r_max), round(float(lr), 9), round(float(target_rho), 9))


def read_table(path: Path = TABLE) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return [
        {
            "r_max": int(row["r_max"]),
            "lr": float(row["lr"]),
            "target_rho": float(row["target_rho"]),
            "val_accuracy": float(row["val_accuracy"]),
            "flops_ratio": float(row["flops_ratio"]),
            "val_loss": float(row["val_loss"]),
            "seconds": float(row["seconds"]),
            "epochs": [float(row[f"val_accuracy_e{e + 1}"]) for e in range(EPOCHS)],
        }
        for row in csv.DictReader(lines)
    ]


def collect(out: Path) -> None:
    import torch

    from orchestrator.spec.models import TaskSpec, TrainingSpec
    from orchestrator.tasks.prepare import prepare_task
    from orchestrator.trial.training import TrialSetup, run_trial

    torch.set_num_threads(1)
    done = {_key(row["r_max"], row["lr"], row["target_rho"]) for row in read_table(out)}
    if not out.exists():
        command = "python benchmarks/samplers_routed.py collect" + (f" --out {out}" if out != TABLE else "")
        out.write_text(
            f"# command: {command}\n"
            f"# started: {datetime.datetime.now().isoformat(timespec='seconds')}\n"
            f"# commit: {commit()}\n"
            f"# task: {TASK}, fixed: {FIXED}, seed: {SEED}, 1 thread\n"
            f"# training: {TrainingSpec(**TRAINING).model_dump()}\n"
            "# each row is one real run of orchestrator.trial.training.run_trial (method radlora); "
            "val_accuracy, flops_ratio and val_loss are after the last epoch, val_accuracy_eN after epoch N\n"
            "r_max,lr,target_rho,val_accuracy,flops_ratio,val_loss,seconds,"
            + ",".join(f"val_accuracy_e{e + 1}" for e in range(EPOCHS))
            + "\n"
        )
    data = prepare_task(TaskSpec(**TASK), ROOT, Path(tempfile.gettempdir()) / "orchestrate-bench-cache")
    setup = TrialSetup(
        arm="routed-surrogate",
        method="radlora",
        model=str(TASK["model"]),
        metric="accuracy",
        training=TrainingSpec(**TRAINING),
        threads=1,
    )
    todo = [point for point in _grid_order() if _key(*point) not in done]
    with tempfile.TemporaryDirectory() as workdir:
        for i, (r_max, lr, rho) in enumerate(todo):
            started = time.perf_counter()
            params = {"r_max": r_max, "lr": lr, "target_rho": rho, **FIXED}
            curve: list[float] = []
            final = run_trial(setup, params, SEED, data, functools.partial(keep_accuracy, curve), Path(workdir))
            seconds = time.perf_counter() - started
            with out.open("a") as handle:
                handle.write(
                    f"{r_max},{lr:.6g},{rho:.6g},{final['val_accuracy']:.6f},{final['flops_ratio']:.6f},"
                    f"{final['val_loss']:.6f},{seconds:.1f}," + ",".join(f"{value:.6f}" for value in curve) + "\n"
                )
            print(
                f"[{i + 1}/{len(todo)}] r_max={r_max} lr={lr:.3g} target_rho={rho:.3g}: "
                f"val_accuracy {final['val_accuracy']:.4f}, flops_ratio {final['flops_ratio']:.4f} ({seconds:.0f} s)",
                flush=True,
            )


# --------------------------------------------------------------------------- objective
@dataclass(frozen=True)
class Outcome:
    """One trial's two objectives, as the surrogate reports them."""

    val_accuracy: float
    flops_ratio: float

    @property
    def violation(self) -> float:
        """``flops_ratio - 0.25``: <= 0 feasible (Optuna's convention, as the product sets it)."""
        return CONSTRAINT.violation(self.flops_ratio)

    @property
    def feasible(self) -> bool:
        return self.violation <= 0


class RoutedSurrogate:
    """(val_accuracy, flops_ratio)(r_max, lr, target_rho) interpolated from the measured table.

    Per r_max, bilinear in (log10 lr, target_rho) over the measured grid, clipped to it:
    exact at measured points, and elsewhere both outcomes are one convex combination of
    the four surrounding measurements (module docstring)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        from scipy.interpolate import RegularGridInterpolator

        self.r_values = sorted({row["r_max"] for row in rows})
        self.lr_values = sorted({row["lr"] for row in rows})
        self.rho_values = sorted({row["target_rho"] for row in rows})
        measured = {_key(row["r_max"], row["lr"], row["target_rho"]): row for row in rows}
        missing = [
            (r, lr, rho)
            for r in self.r_values
            for lr in self.lr_values
            for rho in self.rho_values
            if _key(r, lr, rho) not in measured
        ]
        if missing or len(self.lr_values) < 2 or len(self.rho_values) < 2:
            raise SystemExit(
                f"routed table incomplete ({len(missing)} grid points missing, e.g. {missing[:3]}): "
                "run `python benchmarks/samplers_routed.py collect`"
            )
        axes = (np.log10(self.lr_values), np.array(self.rho_values))
        self.interpolators = {}
        for r in self.r_values:
            values = np.array(
                [
                    [
                        [measured[_key(r, lr, rho)][k] for k in ("val_accuracy", "flops_ratio")]
                        for rho in self.rho_values
                    ]
                    for lr in self.lr_values
                ]
            )
            self.interpolators[r] = RegularGridInterpolator(axes, values, method="linear")
        self.rows = rows

    def outcomes(self, r_max: int, lr: np.ndarray, target_rho: np.ndarray) -> np.ndarray:
        """(n, 2) array of (val_accuracy, flops_ratio) for n points of one r_max cell."""
        x = np.clip(np.log10(lr), math.log10(self.lr_values[0]), math.log10(self.lr_values[-1]))
        y = np.clip(target_rho, self.rho_values[0], self.rho_values[-1])
        return np.asarray(self.interpolators[r_max](np.stack([x, y], axis=-1)))

    def __call__(self, r_max: int, lr: float, target_rho: float) -> Outcome:
        accuracy, flops = self.outcomes(r_max, np.array([lr]), np.array([target_rho]))[0]
        return Outcome(float(accuracy), float(flops))

    def dense_outcomes(self, per_axis: int = 20) -> np.ndarray:
        """Outcomes on a grid ``per_axis`` times finer than the measured one (measured points included)."""
        parts = []
        for r in self.r_values:
            lrs = _refine(np.log10(self.lr_values), per_axis)
            rhos = _refine(np.array(self.rho_values), per_axis)
            x, y = np.meshgrid(10**lrs, rhos, indexing="ij")
            parts.append(self.outcomes(r, x.ravel(), y.ravel()))
        return np.concatenate(parts)


def _refine(nodes: np.ndarray, per_interval: int) -> np.ndarray:
    """The nodes and ``per_interval - 1`` evenly spaced points inside every interval."""
    inner = [np.linspace(a, b, per_interval + 1)[:-1] for a, b in itertools.pairwise(nodes)]
    return np.concatenate([*inner, nodes[-1:]])


def space_params() -> dict[str, Any]:
    from orchestrator.search.space import ParamSpec

    return {
        "r_max": ParamSpec(type="categorical", choices=GRID_R_MAX),
        "lr": ParamSpec(type="float", low=GRID_LR[0], high=GRID_LR[-1], log=True),
        "target_rho": ParamSpec(type="float", low=GRID_RHO[0], high=GRID_RHO[-1]),
    }


# --------------------------------------------------------------------------- score
def feasible_hypervolume(outcomes: np.ndarray) -> float:
    """Hypervolume of the feasible points' Pareto front, (val_accuracy, flops_ratio) rows,
    from the reference point (REF_ACCURACY, 0.25); infeasible rows never count."""
    import torch
    from botorch.utils.multi_objective.hypervolume import Hypervolume
    from botorch.utils.multi_objective.pareto import is_non_dominated

    points = np.asarray(outcomes, dtype=float).reshape(-1, 2)
    feasible = points[[CONSTRAINT.violation(flops) <= 0 for flops in points[:, 1]]]
    if not len(feasible):
        return 0.0
    maximised = torch.tensor(np.column_stack([feasible[:, 0], -feasible[:, 1]]), dtype=torch.double)
    front = _pareto_front(maximised, is_non_dominated)
    reference = torch.tensor([REF_ACCURACY, -CONSTRAINT.bound], dtype=torch.double)
    return float(Hypervolume(ref_point=reference).compute(front))


def _pareto_front(points: Any, is_non_dominated: Callable[[Any], Any], chunk: int = 2048) -> Any:
    """BoTorch's ``is_non_dominated`` is quadratic in memory and time: a dense grid's points
    are thinned chunk by chunk first (a point on the whole front is on its chunk's)."""
    import torch

    while len(points) > chunk:
        kept = torch.cat([part[is_non_dominated(part)] for part in points.split(chunk)])
        if len(kept) == len(points):
            break
        points = kept
    return points[is_non_dominated(points)]


# --------------------------------------------------------------------------- benchmark
def make_sampler(name: str, seed: int, trials: int) -> Any:
    from orchestrator.search.samplers import SamplerPlan, build_sampler, default_startup_trials

    return build_sampler(SamplerPlan(name, seed, default_startup_trials(name, trials), 2))


@dataclass
class Search:
    """One search: every trial's outcome in the order it finished, and each suggestion's wall time."""

    outcomes: list[Outcome]
    seconds: list[float]

    def hypervolume_after(self, trials: int) -> float:
        return feasible_hypervolume(np.array([[o.val_accuracy, o.flops_ratio] for o in self.outcomes[:trials]]))

    def best_feasible_accuracy(self) -> float:
        """The single-objective view: the best val_accuracy among feasible trials (nan if none)."""
        return max((o.val_accuracy for o in self.outcomes if o.feasible), default=float("nan"))


def one_search(name: str, seed: int, trials: int, objective: RoutedSurrogate, concurrency: int = 1) -> Search:
    """Two objectives and the constraint, sequential or asynchronous as ``samplers.one_search``:
    with ``concurrency`` c, c trials are RUNNING at once, the oldest is told, then one asked."""
    import optuna

    from orchestrator.search.samplers import limited_threads
    from orchestrator.search.space import DefineByRun

    space = DefineByRun(space_params(), {})
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(name, seed, trials))
    running: collections.deque = collections.deque()
    search = Search([], [])
    for asked in range(trials + concurrency):
        if len(running) == concurrency or asked >= trials:
            trial = running.popleft()
            outcome = objective(**trial.params)
            trial.set_constraint(str(CONSTRAINT), outcome.violation)  # before tell, as searcher.py
            study.tell(trial, [outcome.val_accuracy, outcome.flops_ratio])
            search.outcomes.append(outcome)
        if asked < trials:
            started = time.perf_counter()
            with limited_threads(1):  # as HonestOptunaSearch.suggest
                trial = study.ask()
                space(trial)
            search.seconds.append(time.perf_counter() - started)
            running.append(trial)
    return search


def summarise(results: dict[str, list[Search]], best: float, checkpoints: list[int]) -> list[dict[str, Any]]:
    rows = []
    for name, runs in results.items():
        row: dict[str, Any] = {"sampler": name, "reps": len(runs)}
        for n in checkpoints:
            scores = np.array([run.hypervolume_after(n) / best for run in runs])
            row[f"hv{n}"] = (scores.mean(), scores.std(ddof=1) if len(scores) > 1 else 0.0)
        row["feasible"] = np.mean([np.mean([o.feasible for o in run.outcomes]) for run in runs])
        row["best_feasible"] = np.mean([run.best_feasible_accuracy() for run in runs])
        suggest = np.concatenate([run.seconds for run in runs])
        row["suggest_p50"], row["suggest_p95"] = np.median(suggest), np.percentile(suggest, 95)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]], checkpoints: list[int]) -> str:
    lines = [
        "| sampler | reps | "
        + " | ".join(f"hypervolume after {n}: mean (sd)" for n in checkpoints)
        + " | feasible trials | best feasible val_accuracy | suggestion s: p50 / p95 |",
        "|---|---|" + "---|" * len(checkpoints) + "---|---|---|",
    ]
    for row in rows:
        cells = " | ".join(f"{row[f'hv{n}'][0]:.3f} ({row[f'hv{n}'][1]:.3f})" for n in checkpoints)
        lines.append(
            f"| {row['sampler']} | {row['reps']} | {cells} | {100 * row['feasible']:.0f}% | "
            f"{row['best_feasible']:.4f} | {row['suggest_p50']:.3f} / {row['suggest_p95']:.3f} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, list[Search]], best: float, trials: int, path: Path) -> None:
    """Mean normalised hypervolume vs finished trials; one panel per concurrency."""
    with panels_by_concurrency(results, path) as axes:
        x = np.arange(1, trials + 1)
        for ax, title, panel in axes:
            for name, runs in panel.items():
                curves = np.array([[run.hypervolume_after(int(n)) / best for n in x] for run in runs])
                mean, sd = curves.mean(axis=0), curves.std(axis=0, ddof=1)
                ax.plot(x, mean, label=f"{name.partition(' (')[0]} (n={len(runs)})")
                ax.fill_between(x, mean - sd, mean + sd, alpha=0.1)
            ax.set_xlabel("finished trials")
            ax.set_ylabel("feasible hypervolume / best reachable (mean ± sd over seeds)")
            ax.set_title(f"{title}: RAD-LoRA surrogate, val_accuracy vs flops_ratio <= 0.25", fontsize=9)
            ax.legend(fontsize=8, loc="lower right")
            ax.grid(alpha=0.3)


def run(
    samplers: list[str],
    reps: int,
    trials: int,
    concurrencies: list[int],
    plot_path: Path | None,
    json_path: Path | None,
) -> None:
    import json
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    rows = read_table()
    objective = RoutedSurrogate(rows)
    best = feasible_hypervolume(objective.dense_outcomes())
    measured = feasible_hypervolume(np.array([[r["val_accuracy"], r["flops_ratio"]] for r in rows]))
    feasible_share = np.mean([r["flops_ratio"] <= CONSTRAINT.bound for r in rows])
    checkpoints = [n for n in CHECKPOINTS if n < trials] + [trials]
    print(
        f"surrogate: {len(rows)} measured RAD-LoRA trainings ({100 * feasible_share:.0f}% feasible); "
        f"constraint {CONSTRAINT}; reference point (val_accuracy {REF_ACCURACY}, flops_ratio {CONSTRAINT.bound}); "
        f"best reachable feasible hypervolume {best:.5f} (dense grid; the measured table's front: {measured:.5f} "
        f"= {measured / best:.3f} of it)"
    )
    load = os.getloadavg()
    started = time.perf_counter()
    print(f"load average before: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    results: dict[str, list[Search]] = {}
    for concurrency in concurrencies:
        for name in samplers:
            for seed in range(reps):
                search = one_search(name, seed, trials, objective, concurrency)
                results.setdefault(label(name, concurrency), []).append(search)
                print(
                    f"{label(name, concurrency):26} seed {seed:2}: hypervolume after {trials} "
                    f"{search.hypervolume_after(trials) / best:.3f}, "
                    f"feasible {sum(o.feasible for o in search.outcomes)}/{trials}, "
                    f"mean suggestion {np.mean(search.seconds):.3f} s",
                    flush=True,
                )
    load = os.getloadavg()
    print(
        f"\nload average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
        f"total {time.perf_counter() - started:.0f} s\n"
    )
    print(markdown_table(summarise(results, best, checkpoints), checkpoints))
    if plot_path:
        plot(results, best, trials, plot_path)
        print(f"\nplot: {plot_path}")
    if json_path:
        json_path.write_text(
            json.dumps(
                {
                    "best_hypervolume": best,
                    "reference_point": [REF_ACCURACY, CONSTRAINT.bound],
                    "trials": trials,
                    "results": {
                        name: [
                            {
                                "seed": seed,
                                "outcomes": [[o.val_accuracy, o.flops_ratio] for o in run.outcomes],
                                "seconds": run.seconds,
                                "hypervolume": {n: run.hypervolume_after(n) / best for n in checkpoints},
                            }
                            for seed, run in enumerate(runs)
                        ]
                        for name, runs in results.items()
                    },
                }
            )
        )


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("command", nargs="?", default="run", choices=["run", "collect"])
    parser.add_argument("--out", type=Path, default=TABLE, help="collect: the table to write (appends; resumes)")
    parser.add_argument("--samplers", default="random,tpe,gp,nsga2,botorch-legacy,botorch")
    parser.add_argument(
        "--concurrency", default="1", help="trials running at once, e.g. 1,4; 1 = sequential, more = asynchronous"
    )
    parser.add_argument("--reps", type=int, default=10, help="repetitions (seeds 0..reps-1) per sampler")
    parser.add_argument("--trials", type=int, default=30, help="trials per search")
    parser.add_argument("--plot", type=Path, default=None, help="e.g. docs/samplers_routed.png")
    parser.add_argument("--json", type=Path, default=None, help="also write every search's outcomes here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.command == "collect":
        collect(args.out)
    else:
        run(
            args.samplers.split(","),
            args.reps,
            args.trials,
            [int(c) for c in args.concurrency.split(",")],
            args.plot,
            args.json,
        )


if __name__ == "__main__":
    main()
