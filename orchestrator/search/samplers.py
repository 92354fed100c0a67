"""Sampler names in a hypothesis -> Optuna sampler instances (the names and how each is
built: ``orchestrator.search.registry.SAMPLERS``).

Each sampler is built fresh per arm (one study per sampler instance; the BoTorch
samplers keep per-study state). Model-based samplers get ``n_startup_trials`` random
trials first. These are Optuna's and optuna-integration's samplers, configured, except
``botorch``: ``orchestrator.search.botorch_sampler``, BoTorch's models and optimisers behind
Optuna's sampler interface, because optuna-integration's one-hot relaxation of
categoricals stalled on the incumbent's cell (docs/samplers.md); the integration sampler
stays reachable as ``botorch-legacy``, for comparison.

With several trials running at once (``max_concurrent > 1``) the model-based samplers
see the running trials: ``botorch`` and ``botorch-legacy`` as BoTorch ``X_pending``,
``gp`` as pending points of its q-batch acquisition (Optuna 5's ``GPSampler`` does so by
itself), ``tpe`` through its constant liar.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.search.registry import SAMPLERS

if TYPE_CHECKING:
    import optuna
    import torch


@dataclass(frozen=True)
class SamplerPlan:
    """What ``orchestrate plan`` shows and ``build_sampler`` builds."""

    name: str
    seed: int
    startup_trials: int
    n_objectives: int
    grid: dict[str, list[Any]] | None = None
    #: epochs of a full trial: ``botorch`` reads every trial's reported epochs as evidence at
    #: fidelity epoch / epochs (``botorch_sampler``); 1 = final values only
    epochs: int = 1

    def describe(self) -> str:
        extra = f", {self.startup_trials} random startup trials" if SAMPLERS[self.name].model_based else ""
        return f"{self.name} (seed {self.seed}{extra})"


def default_startup_trials(name: str, trials: int) -> int:
    """A third of the budget, at least 2 and at most 10 (Optuna's own default is 10,
    which would make a 12-trial search almost random)."""
    if not SAMPLERS[name].model_based:
        return 0
    return max(2, min(10, trials // 3))


def build_sampler(plan: SamplerPlan) -> optuna.samplers.BaseSampler:
    """A fresh sampler for one arm's study (``registry.SAMPLERS`` says how)."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return SAMPLERS[plan.name].build(plan)


#: BoTorch's budget per suggestion (benchmarks/suggest_latency.py, docs/samplers.md).
#: optuna-integration's defaults (GP fit to convergence; 10 restarts x 512 raw samples,
#: 20 x 1024 with several objectives; 256 MC samples) took 1.5 s (one objective) and 31 s
#: (two objectives + a constraint) per suggestion at 40 trials on a busy 2-core machine;
#: these take 0.5 s and 1.1 s. On a 4-parameter space (10 dimensions once categoricals
#: are one-hot) 4 restarts from the best of 128 raw samples find the same optimum, and
#: 50 L-BFGS steps bring the GP's marginal likelihood within 0.3% of convergence.
BOTORCH_RESTARTS = 4
BOTORCH_RAW_SAMPLES = 128
BOTORCH_MC_SAMPLES = 64
BOTORCH_MAXITER = 100
BOTORCH_FIT_MAXITER = 50


def botorch_candidates(
    train_x: torch.Tensor,
    train_obj: torch.Tensor,
    train_con: torch.Tensor | None,
    bounds: torch.Tensor,
    pending_x: torch.Tensor | None,
) -> torch.Tensor:
    """BoTorchSampler's ``candidates_func``: qLogEI (one objective) or qLogNEHVI (several),
    constraints as BoTorch outcome constraints (<= 0 feasible), pending trials as
    ``X_pending``; a smaller acquisition optimisation than optuna-integration's.

    Module level, so the sampler pickles (Ray checkpoints the searcher)."""
    import botorch.optim  # noqa: F401  (loads scipy's OpenBLAS, so threadpoolctl sees it)
    from threadpoolctl import threadpool_limits

    # One BLAS thread: OMP_NUM_THREADS set after scipy's OpenBLAS is loaded changes nothing,
    # and 2 OpenBLAS threads on a busy machine made each L-BFGS-B step ~5 ms instead of ~0.03 ms.
    with threadpool_limits(limits=1):
        return _botorch_candidates(train_x, train_obj, train_con, bounds, pending_x)


def _botorch_candidates(
    train_x: torch.Tensor,
    train_obj: torch.Tensor,
    train_con: torch.Tensor | None,
    bounds: torch.Tensor,
    pending_x: torch.Tensor | None,
) -> torch.Tensor:
    import functools

    import torch
    from botorch.acquisition import AcquisitionFunction
    from botorch.acquisition.logei import qLogExpectedImprovement
    from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
    from botorch.acquisition.multi_objective.objective import IdentityMCMultiOutputObjective
    from botorch.acquisition.objective import GenericMCObjective
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from botorch.optim import optimize_acqf
    from botorch.sampling import SobolQMCNormalSampler
    from botorch.utils.transforms import normalize, unnormalize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    n_objectives = train_obj.size(-1)
    train_y = train_obj if train_con is None else torch.cat([train_obj, train_con], dim=-1)
    constraints: list[Callable[[torch.Tensor], torch.Tensor]] | None = None
    if train_con is not None:
        constraints = [functools.partial(_outcome, index=n_objectives + i) for i in range(train_con.size(-1))]
    x = normalize(train_x, bounds=bounds)
    pending = normalize(pending_x, bounds=bounds) if pending_x is not None and len(pending_x) else None

    model = SingleTaskGP(x, train_y, outcome_transform=Standardize(m=train_y.size(-1)))
    fit_gpytorch_mll(
        ExactMarginalLogLikelihood(model.likelihood, model),
        optimizer_kwargs={"options": {"maxiter": BOTORCH_FIT_MAXITER}},
    )
    sampler = SobolQMCNormalSampler(torch.Size([BOTORCH_MC_SAMPLES]))
    acqf: AcquisitionFunction
    if n_objectives == 1:
        feasible = train_obj if train_con is None else train_obj[(train_con <= 0).all(dim=-1)]
        # none feasible yet: any feasible point improves
        best_f = feasible.max() if feasible.numel() else train_obj.min()
        acqf = qLogExpectedImprovement(
            model=model,
            best_f=best_f,
            sampler=sampler,
            X_pending=pending,
            objective=GenericMCObjective(functools.partial(_outcome, index=0)),
            constraints=constraints,
        )
    else:
        acqf = qLogNoisyExpectedHypervolumeImprovement(
            model=model,
            ref_point=(train_obj.min(dim=0).values - 1e-8).tolist(),
            X_baseline=x,
            prune_baseline=True,
            sampler=sampler,
            X_pending=pending,
            constraints=constraints,
            objective=IdentityMCMultiOutputObjective(outcomes=list(range(n_objectives))),
        )
    unit = torch.zeros_like(bounds)
    unit[1] = 1
    candidates, _ = optimize_acqf(
        acq_function=acqf,
        bounds=unit,
        q=1,
        num_restarts=BOTORCH_RESTARTS,
        raw_samples=BOTORCH_RAW_SAMPLES,
        options={"batch_limit": 5, "maxiter": BOTORCH_MAXITER},
    )
    return unnormalize(candidates.detach(), bounds=bounds)


def _outcome(samples: torch.Tensor, X: torch.Tensor | None = None, *, index: int) -> torch.Tensor:
    """Column ``index`` of the model's outcomes (objective or constraint, as BoTorch wants a callable)."""
    return samples[..., index]


@contextlib.contextmanager
def limited_threads(threads: int = 1) -> Iterator[None]:
    """Limit BLAS/torch threads on the driver around sampler calls: GP and BoTorch
    suggestions stall for seconds to minutes when they fight trials for cores
    (STACK-NOTES: 0.25 s quiet vs ~71 s oversubscribed)."""
    import torch

    before_env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    import scipy.optimize  # noqa: F401  (loads scipy's OpenBLAS so threadpoolctl can limit it)
    from threadpoolctl import threadpool_limits

    before_torch = torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    try:
        # OMP_NUM_THREADS is read only when OpenBLAS loads; an already-loaded pool must be
        # limited directly (GP suggestions 2-7x faster from 40 trials, docs/samplers.md).
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before_torch)
        for key, value in before_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
