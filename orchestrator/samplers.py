"""Sampler names in a hypothesis -> Optuna sampler instances.

Each sampler is built fresh per arm (one study per sampler instance; BoTorch's
sampler keeps per-study state). Model-based samplers get ``n_startup_trials`` random
trials first. Nothing is written by hand: these are Optuna's and
optuna-integration's samplers, configured.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    import optuna

#: (sampler name, handles several objectives, is model-based)
SAMPLER_TRAITS: dict[str, tuple[bool, bool]] = {
    "tpe": (True, True),
    "gp": (True, True),
    "botorch": (True, True),
    "nsga2": (True, False),
    "cmaes": (False, True),
    "qmc": (True, False),
    "random": (True, False),
    "grid": (True, False),
}


@dataclass(frozen=True)
class SamplerPlan:
    """What ``orchestrate plan`` shows and ``build_sampler`` builds."""

    name: str
    seed: int
    startup_trials: int
    n_objectives: int
    grid: dict[str, list[Any]] | None = None

    def describe(self) -> str:
        extra = f", {self.startup_trials} random startup trials" if SAMPLER_TRAITS[self.name][1] else ""
        return f"{self.name} (seed {self.seed}{extra})"


def default_startup_trials(name: str, trials: int) -> int:
    """A third of the budget, at least 2 and at most 10 (Optuna's own default is 10,
    which would make a 12-trial search almost random)."""
    if not SAMPLER_TRAITS[name][1]:
        return 0
    return max(2, min(10, trials // 3))


def build_sampler(plan: SamplerPlan) -> "optuna.samplers.BaseSampler":
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    builders: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=plan.startup_trials, multivariate=True, group=True),
        "gp": lambda: optuna.samplers.GPSampler(seed=plan.seed, n_startup_trials=plan.startup_trials),
        "botorch": _botorch(plan),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=plan.seed, population_size=max(4, plan.startup_trials or 4)),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=plan.seed, n_startup_trials=plan.startup_trials, warn_independent_sampling=False),
        "qmc": lambda: optuna.samplers.QMCSampler(seed=plan.seed, scramble=True, warn_independent_sampling=False),
        "random": lambda: optuna.samplers.RandomSampler(seed=plan.seed),
        "grid": lambda: optuna.samplers.GridSampler(plan.grid or {}, seed=plan.seed),
    }
    return builders[plan.name]()


def _botorch(plan: SamplerPlan) -> Callable[[], "optuna.samplers.BaseSampler"]:
    def build() -> "optuna.samplers.BaseSampler":
        import optuna
        from optuna_integration import BoTorchSampler

        return BoTorchSampler(
            n_startup_trials=plan.startup_trials,
            seed=plan.seed,
            independent_sampler=optuna.samplers.RandomSampler(seed=plan.seed),
        )

    return build


@contextlib.contextmanager
def limited_threads(threads: int = 1) -> Iterator[None]:
    """Limit BLAS/torch threads on the driver around sampler calls: GP and BoTorch
    suggestions stall for seconds to minutes when they fight trials for cores
    (STACK-NOTES: 0.25 s quiet vs ~71 s oversubscribed)."""
    import torch

    before_env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    before_torch = torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before_torch)
        for key, value in before_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
