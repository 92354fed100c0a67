"""A BoTorch sampler for mixed categorical / integer / continuous spaces (``sampler: botorch``).

optuna-integration's ``BoTorchSampler`` one-hot encodes categoricals, optimises the
acquisition over their continuous relaxation and rounds back; on a surrogate of real
LoRA trials that kept rounding to the incumbent's (r, alpha) cell, and only 5 of 10
searches reached 99% of the best (docs/samplers.md). Its ``candidates_func`` is only
given the one-hot columns, without saying which belong together, so the fix cannot live
there: this is an Optuna sampler of its own, built from BoTorch's pieces.

- Every searched parameter is one column. Floats and wide integers are continuous in
  [0, 1] (log-scaled ones in log space); integers and stepped floats with at most
  ``MAX_DISCRETE_VALUES`` values are discrete columns with those values; a categorical
  is a column of choice indices.
- The model is ``MixedSingleTaskGP`` (a categorical, Hamming-distance kernel on the
  categorical columns; ``SingleTaskGP`` where there are none), one output per objective
  and per constraint, standardised.
- The acquisition is noise-aware: qLogNEI for one objective, qLogNEHVI for several;
  constraints from ``trial.set_constraint`` are outcome constraints (<= 0 feasible);
  trials still RUNNING are ``X_pending``, so concurrent suggestions spread.
- The acquisition is optimised over the discrete columns as discrete: with at most
  ``ENUMERATE_LIMIT`` combinations of discrete values every combination is optimised
  (the continuous columns by L-BFGS, all combinations in one batch); with more,
  ``optimize_acqf_mixed_alternating`` (discrete neighbourhood search alternating with
  L-BFGS on the continuous columns). Integers are therefore never rounded after the fact,
  except those wider than ``MAX_DISCRETE_VALUES`` values (continuous relaxation).

Parameters that only some trials have (conditional ones, ``when:``) are left to the
independent sampler (random), as Optuna's ``GPSampler`` does: the model is fitted on the
parameters every finished trial has.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    import torch
    from botorch.acquisition import AcquisitionFunction
    from botorch.models.model import Model

#: Integers and stepped floats with more values than this are relaxed to continuous and
#: snapped to the grid afterwards (BoTorch's own MAX_DISCRETE_VALUES for local search).
MAX_DISCRETE_VALUES = 20
#: Up to this many combinations of discrete values, every one is optimised (the
#: benchmark's r x alpha space has 15); beyond, discrete local search.
ENUMERATE_LIMIT = 64
#: The budget per suggestion: 50 L-BFGS steps bring the GP's marginal likelihood within
#: 0.3% of convergence (docs/samplers.md); 64 Sobol MC samples; the rest keeps an ask at
#: 40 trials under 1 s on 2 shared cores (benchmarks/suggest_latency.py).
FIT_MAXITER = 50
MC_SAMPLES = 64
RAW_SAMPLES_PER_COMBINATION = 16
ACQF_MAXITER = 100
#: Beyond ENUMERATE_LIMIT (e.g. search_spaces/lora.yaml: 75 combinations with the stepped
#: dropout): 256 raw samples, 4 restarts and 8 alternating steps took 0.40 s CPU (one
#: objective) and 0.98 s (two + a constraint) per ask at 40 trials; these 0.29 / 0.86 s.
#: Most of the rest is BoTorch's start: an L-BFGS run on the continuous relaxation.
MIXED_RAW_SAMPLES = 128
MIXED_RESTARTS = 2
MIXED_ALTERNATING_STEPS = 4
MIXED_RELAXATION_MAXITER = 20


@dataclass(frozen=True)
class Column:
    """One searched parameter as one column of the model's input."""

    name: str
    distribution: BaseDistribution
    kind: Literal["continuous", "discrete", "categorical"]
    values: tuple[float, ...] = ()  # the column's allowed values (discrete, categorical)

    @property
    def upper(self) -> float:
        return float(len(self.values) - 1) if self.kind == "categorical" else 1.0

    def encode(self, value: Any) -> float:
        dist = self.distribution
        if isinstance(dist, CategoricalDistribution):
            return float(dist.to_internal_repr(value))
        dist = _numeric(dist)
        low, high = _scaled(dist, dist.low), _scaled(dist, dist.high)
        return 0.0 if high == low else (_scaled(dist, value) - low) / (high - low)

    def decode(self, column: float) -> Any:
        dist = self.distribution
        if isinstance(dist, CategoricalDistribution):
            return dist.to_external_repr(int(min(max(round(column), 0), len(dist.choices) - 1)))
        dist = _numeric(dist)
        low, high = _scaled(dist, dist.low), _scaled(dist, dist.high)
        scaled = low + min(max(column, 0.0), 1.0) * (high - low)
        value = math.exp(scaled) if dist.log else scaled
        if dist.step is not None:
            value = dist.low + round((value - dist.low) / dist.step) * dist.step
        value = min(max(value, dist.low), dist.high)
        return round(value) if isinstance(dist, IntDistribution) else float(value)


def _numeric(dist: BaseDistribution) -> FloatDistribution | IntDistribution:
    """A column's distribution that is not categorical: Optuna has only these two others."""
    if not isinstance(dist, (FloatDistribution, IntDistribution)):
        raise TypeError(f"unsupported distribution {type(dist).__name__}")
    return dist


def _scaled(dist: FloatDistribution | IntDistribution, value: float) -> float:
    return math.log(value) if dist.log else float(value)


def column_for(name: str, dist: BaseDistribution) -> Column:
    if isinstance(dist, CategoricalDistribution):
        return Column(name, dist, "categorical", tuple(float(i) for i in range(len(dist.choices))))
    grid = _grid(dist)
    if grid is not None and len(grid) <= MAX_DISCRETE_VALUES:
        continuous = Column(name, dist, "continuous")
        return Column(name, dist, "discrete", tuple(sorted({continuous.encode(v) for v in grid})))
    return Column(name, dist, "continuous")


def _grid(dist: BaseDistribution) -> list[float] | None:
    """Every value of an integer or stepped float parameter (None: continuous)."""
    if isinstance(dist, IntDistribution):
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        count = round((dist.high - dist.low) / dist.step) + 1
        return [dist.low + i * dist.step for i in range(count)]
    return None


@dataclass(frozen=True)
class MixedSpace:
    """Optuna distributions <-> rows of the model's input."""

    columns: tuple[Column, ...]

    @classmethod
    def of(cls, search_space: dict[str, BaseDistribution]) -> MixedSpace:
        return cls(tuple(column_for(name, dist) for name, dist in search_space.items()))

    def dims(self, kind: str) -> dict[int, list[float]]:
        return {i: list(c.values) for i, c in enumerate(self.columns) if c.kind == kind}

    @property
    def continuous(self) -> list[int]:
        return [i for i, c in enumerate(self.columns) if c.kind == "continuous"]

    def combinations(self) -> int:
        return math.prod(len(c.values) for c in self.columns if c.kind != "continuous")

    def encode(self, params: Sequence[dict[str, Any]]) -> torch.Tensor:
        import torch

        return torch.tensor(
            [[c.encode(p[c.name]) for c in self.columns] for p in params], dtype=torch.float64
        ).reshape(-1, len(self.columns))

    def decode(self, row: torch.Tensor) -> dict[str, Any]:
        return {c.name: c.decode(float(x)) for c, x in zip(self.columns, row.tolist(), strict=True)}

    def bounds(self) -> torch.Tensor:
        import torch

        return torch.tensor([[0.0] * len(self.columns), [c.upper for c in self.columns]], dtype=torch.float64)


class MixedBoTorchSampler(BaseSampler):
    """BoTorch Bayesian optimisation that treats categorical and integer parameters as such.

    Example:
        >>> import optuna
        >>> sampler = MixedBoTorchSampler(n_startup_trials=3, seed=0)
        >>> study = optuna.create_study(sampler=sampler)
        >>> study.optimize(lambda t: (t.suggest_float("lr", 1e-4, 1e-1, log=True) - 1e-2) ** 2
        ...                + t.suggest_categorical("r", [2, 4, 8]) / 100, n_trials=4)
        >>> len(study.trials)
        4

    Args:
        n_startup_trials: trials sampled by ``independent_sampler`` before the model is used.
        seed: seeds the startup/independent sampler and every acquisition optimisation.
        independent_sampler: samples the startup trials and any parameter outside the
            relative search space (conditional ones); a seeded ``RandomSampler`` by default.
    """

    def __init__(
        self, *, n_startup_trials: int = 10, seed: int | None = None, independent_sampler: BaseSampler | None = None
    ) -> None:
        self._n_startup_trials = n_startup_trials
        self._rng = np.random.RandomState(seed)
        self._independent_sampler = independent_sampler or RandomSampler(seed=seed)
        self._search_space = IntersectionSearchSpace()

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._independent_sampler.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {name: dist for name, dist in self._search_space.calculate(study).items() if not dist.single()}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        completed = [t for t in trials if t.state == TrialState.COMPLETE and all(np.isfinite(t.values))]
        if len(completed) < max(self._n_startup_trials, 2):
            return {}
        # Trials still running, with every parameter chosen: the points other workers train now.
        running = [
            t
            for t in trials
            if t.state == TrialState.RUNNING and t.number != trial.number and search_space.keys() <= t.params.keys()
        ]
        space = MixedSpace.of(search_space)
        observations = Observations.of(completed, study.directions)
        pending = space.encode([t.params for t in running]) if running else None
        seed = int(self._rng.randint(2**31 - 1))
        return space.decode(suggest(space, space.encode([t.params for t in completed]), observations, pending, seed))

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._independent_sampler.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._independent_sampler.before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._independent_sampler.after_trial(study, trial, state, values)


@dataclass(frozen=True)
class Observations:
    """Finished trials' outcomes, every objective to be maximised, constraints <= 0 feasible."""

    objectives: np.ndarray  # (n, n_objectives)
    constraints: np.ndarray  # (n, n_constraints), possibly 0 columns

    @classmethod
    def of(cls, trials: list[FrozenTrial], directions: Sequence[StudyDirection]) -> Observations:
        sign = np.array([1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in directions])
        objectives = sign * np.array([t.values for t in trials], dtype=float)
        keys = sorted(set.intersection(*(set(t.constraints) for t in trials)))
        constraints = np.array([[t.constraints[k] for k in keys] for t in trials], dtype=float).reshape(
            len(trials), len(keys)
        )
        return cls(objectives, constraints)

    @property
    def feasible(self) -> np.ndarray:
        # numpy types .all() as a bool or an array; with axis=1 of a 2-D array it is an array
        return cast(np.ndarray, (self.constraints <= 0).all(axis=1))


def suggest(
    space: MixedSpace, x: torch.Tensor, observed: Observations, pending: torch.Tensor | None, seed: int
) -> torch.Tensor:
    """The next point (one row in ``space``'s columns): fit, build the acquisition, optimise it."""
    import botorch.optim  # noqa: F401  (loads scipy's OpenBLAS, so threadpoolctl sees it)
    import torch
    from threadpoolctl import threadpool_limits

    # One BLAS thread: 2 OpenBLAS threads on a busy 2-core machine made each L-BFGS-B
    # step ~5 ms instead of ~0.03 ms (docs/samplers.md).
    with threadpool_limits(limits=1), torch.random.fork_rng():
        torch.manual_seed(seed)
        model = fit_model(space, x, observed)
        acqf = acquisition(model, x, observed, pending)
        return optimize(acqf, space, seed)


def fit_model(space: MixedSpace, x: torch.Tensor, observed: Observations) -> Model:
    import torch
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import MixedSingleTaskGP, SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    y = torch.tensor(np.concatenate([observed.objectives, observed.constraints], axis=1), dtype=torch.float64)
    categorical = list(space.dims("categorical"))
    if categorical:
        model = MixedSingleTaskGP(x, y, cat_dims=categorical, outcome_transform=Standardize(m=y.size(-1)))
    else:
        model = SingleTaskGP(x, y, outcome_transform=Standardize(m=y.size(-1)))
    fit_gpytorch_mll(
        ExactMarginalLogLikelihood(model.likelihood, model), optimizer_kwargs={"options": {"maxiter": FIT_MAXITER}}
    )
    return model


def acquisition(
    model: Model, x: torch.Tensor, observed: Observations, pending: torch.Tensor | None
) -> AcquisitionFunction:
    """qLogNEI (one objective) or qLogNEHVI (several): both integrate over the noise at the
    observed points instead of trusting the best observed value."""
    import torch
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
    from botorch.acquisition.multi_objective.objective import IdentityMCMultiOutputObjective
    from botorch.acquisition.objective import GenericMCObjective
    from botorch.sampling import SobolQMCNormalSampler

    n_objectives = observed.objectives.shape[1]
    constraints: list[Callable[[torch.Tensor], torch.Tensor]] | None = [
        functools.partial(_outcome, index=n_objectives + i) for i in range(observed.constraints.shape[1])
    ] or None
    sampler = SobolQMCNormalSampler(torch.Size([MC_SAMPLES]))
    if n_objectives == 1:
        return qLogNoisyExpectedImprovement(
            model=model,
            X_baseline=x,
            sampler=sampler,
            X_pending=pending,
            prune_baseline=True,
            objective=GenericMCObjective(functools.partial(_outcome, index=0)),
            constraints=constraints,
        )
    return qLogNoisyExpectedHypervolumeImprovement(
        model=model,
        ref_point=reference_point(observed).tolist(),
        X_baseline=x,
        prune_baseline=True,
        sampler=sampler,
        X_pending=pending,
        constraints=constraints,
        objective=IdentityMCMultiOutputObjective(outcomes=list(range(n_objectives))),
    )


def reference_point(observed: Observations) -> np.ndarray:
    """Just below the worst feasible value of each objective (all trials' while none is
    feasible), by a tenth of its range: every feasible trial adds hypervolume."""
    values = observed.objectives[observed.feasible] if observed.feasible.any() else observed.objectives
    low, high = values.min(axis=0), values.max(axis=0)
    return low - 0.1 * np.maximum(high - low, 1e-6)


def _outcome(samples: torch.Tensor, X: torch.Tensor | None = None, *, index: int) -> torch.Tensor:
    """Column ``index`` of the model's outcomes (objective or constraint): a module-level
    function, so the acquisition's callables pickle."""
    return samples[..., index]


def optimize(acqf: AcquisitionFunction, space: MixedSpace, seed: int) -> torch.Tensor:
    """Maximise the acquisition over ``space``, discrete columns kept discrete."""
    from botorch.optim.optimize_mixed import optimize_acqf_mixed_alternating

    if space.combinations() <= ENUMERATE_LIMIT:
        return optimize_every_combination(acqf, space, seed)
    candidate, _ = optimize_acqf_mixed_alternating(
        acqf,
        space.bounds(),
        discrete_dims=space.dims("discrete"),
        cat_dims=space.dims("categorical"),
        raw_samples=MIXED_RAW_SAMPLES,
        num_restarts=MIXED_RESTARTS,
        options={
            "maxiter_alternating": MIXED_ALTERNATING_STEPS,
            "max_discrete_values": MAX_DISCRETE_VALUES,
            "maxiter_init": MIXED_RELAXATION_MAXITER,
        },
    )
    return candidate[0]


def optimize_every_combination(acqf: AcquisitionFunction, space: MixedSpace, seed: int) -> torch.Tensor:
    """Every combination of discrete values, each with the continuous columns optimised.

    What ``optimize_acqf_mixed`` does with one ``fixed_features`` per combination, but in
    one batch: that loops over the combinations, one ``optimize_acqf`` each (15
    combinations took ~15x one continuous optimisation); here the best of
    ``RAW_SAMPLES_PER_COMBINATION`` Sobol points per combination starts one L-BFGS run, all
    runs optimised together with the discrete columns fixed per run."""
    import torch
    from botorch.generation.gen import gen_candidates_scipy

    discrete = [i for i, c in enumerate(space.columns) if c.kind != "continuous"]
    continuous = space.continuous
    combos = torch.tensor(list(itertools.product(*(space.columns[i].values for i in discrete))), dtype=torch.float64)
    combos = combos.reshape(len(combos), len(discrete))
    if not continuous:
        points = combos
    else:
        raw = (
            torch.quasirandom.SobolEngine(len(continuous), scramble=True, seed=seed)
            .draw(RAW_SAMPLES_PER_COMBINATION)
            .to(torch.float64)
        )
        grid = torch.empty(len(combos), len(raw), len(space.columns), dtype=torch.float64)
        grid[..., discrete] = combos[:, None, :]
        grid[..., continuous] = raw[None, :, :]
        with torch.no_grad():
            values = _evaluate(acqf, grid.reshape(-1, 1, len(space.columns))).reshape(len(combos), len(raw))
        starts = grid[torch.arange(len(combos)), values.argmax(dim=1)]  # the best raw point of each combination
        bounds = space.bounds()
        points, _ = gen_candidates_scipy(
            starts.unsqueeze(1),
            acqf,
            lower_bounds=bounds[0],
            upper_bounds=bounds[1],
            fixed_features={i: starts[:, i] for i in discrete},
            options={"maxiter": ACQF_MAXITER},
        )
        points = points.squeeze(1)
    with torch.no_grad():
        values = _evaluate(acqf, points.reshape(-1, 1, len(space.columns)))
    return points[values.argmax()]


def _evaluate(acqf: AcquisitionFunction, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    import torch

    return torch.cat([acqf(chunk) for chunk in x.split(batch)])
