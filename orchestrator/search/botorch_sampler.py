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
- One objective: Optuna ``GPSampler``'s GP (one Matern-5/2 over every column, a
  categorical one at distance 0 or 1, under Optuna's lengthscale and scale priors;
  BoTorch's noise prior), standardised. On the single-objective benchmark it needs 14
  trials to 99% (seeds 0-9; held-out seeds 10-19: 16) where ``MixedSingleTaskGP`` needed
  16.5 (21.5); with 4 trials at once 20 against 19.5 (docs/samplers.md). With Optuna's
  noise prior too (Gamma(1.1, 30), noise >= 1e-6) it needed 15.
- Several objectives, and every constraint: ``MixedSingleTaskGP`` (a categorical,
  Hamming-distance kernel on the categorical columns, summed with and multiplied by the
  kernel of the ordinal ones; ``SingleTaskGP`` where there are none), one output each,
  standardised. Optuna's GP for the two objectives (the constraint kept here) lowered the
  two-objective constrained benchmark's hypervolume after 30 from 0.749 to 0.639.
- The acquisition is noise-aware: qLogNEI for one objective, qLogNEHVI for several;
  constraints from ``trial.set_constraint`` are outcome constraints (<= 0 feasible);
  trials still RUNNING are ``X_pending``, so concurrent suggestions spread.
- The random start is ``n_startup_trials`` trials *started*, running ones included (the
  model also needs 2 finished ones). Counting finished trials only, 4 trials at once made
  13 random trials of a 10-trial start (the model waited for 10 results while 3 more were
  asked at random). Trials to 99% with 4 at once: 17.5 (seeds 0-9; held-out 10-19: 19)
  against 20 (21.5) before; one at a time unchanged, 14 (16). The running trials as
  fantasies instead of ``X_pending`` (Kriging believer, constant liar max/min: 19, 20.5,
  23 on seeds 0-9), only the latest one (21), 256 MC samples (18) or none at all (25,
  counting finished trials) did worse. Two objectives + a constraint, 4 at once:
  hypervolume after 30 0.668 against 0.607; under ASHA, 4 at once, mean best after 180
  epochs 0.7982 against 0.7976 (docs/samplers.md).
- The acquisition is optimised over the discrete columns as discrete: with at most
  ``ENUMERATE_LIMIT`` combinations of discrete values every combination is optimised
  (the continuous columns by L-BFGS, all combinations in one batch); with more,
  ``optimize_acqf_mixed_alternating`` (discrete neighbourhood search alternating with
  L-BFGS on the continuous columns). Integers are therefore never rounded after the fact,
  except those wider than ``MAX_DISCRETE_VALUES`` values (continuous relaxation).

**Large studies** (``model_subset``): the GP sees at most ``MAX_MODEL_POINTS``
observations (fewer with several objectives; the best trials for half of them and a
random sample of the rest, drawn anew per suggestion), the acquisition the latest
``MAX_PENDING_POINTS`` running trials and, as its baseline, the ``MAX_BASELINE_POINTS``
observed points most likely the best: alone, an ask with 31 running took 1.0-1.8 s from
200 to 1,000 finished trials (without the bounds: 2.4 s at 200, 9 s at 500; docs/samplers.md,
section 4). Inside the scale benchmark's driver (32 slots, 300 trials) it grew to 2.6 s
p50 until the baseline was bounded too (BoTorch's pruning kept ~46 of its ~60 points
there), 1.75 s after, flat from 50 finished trials.

Parameters that only some trials have (conditional ones, ``when:``) are left to the
independent sampler (random), as Optuna's ``GPSampler`` does: the model is fitted on the
parameters every finished trial has.

**Learning curves as low-fidelity evidence** (``fidelity_steps``, one objective): every
epoch a trial reported (``trial.intermediate_values``: Ray's ``OptunaSearch`` reports one
per result) is an observation at fidelity ``s = epoch / fidelity_steps``, an extra input
column of the GP, so trials that ASHA stopped after an epoch (PRUNED) and trials still
running inform the model instead of being dropped. The acquisition is evaluated at
``s = 1`` (``FixedFeatureAcquisitionFunction``): the model predicts what a full training
reaches. Why an input column and not BoTorch's knowledge-gradient multi-fidelity
acquisitions (qMFKG): those choose the fidelity to run, and here the scheduler (ASHA)
does; a kernel that learns, per search, how much an early epoch says about the last one
(its lengthscale on ``s``) is what remains useful. Constraints are modelled on each
trial's last report. Several objectives: Optuna keeps no intermediate values for them,
so only finished trials count (as without ``fidelity_steps``).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from orchestrator.search.model_subset import UNKNOWN_OBJECTIVES_ATTR, likely_best, model_trials, recent_pending

if TYPE_CHECKING:
    import torch
    from botorch.acquisition import AcquisitionFunction
    from botorch.models import SingleTaskGP
    from botorch.models.model import Model

#: Integers and stepped floats with more values than this are relaxed to continuous and
#: snapped to the grid afterwards (BoTorch's own MAX_DISCRETE_VALUES for local search).
MAX_DISCRETE_VALUES = 20
#: Up to this many combinations of discrete values, every one is scored (search_spaces/
#: lora.yaml has 75: r x alpha x stepped dropout; the sampler benchmark's r x alpha 15) at
#: up to RAW_SAMPLES_PER_COMBINATION Sobol points of the continuous columns, at most
#: RAW_POINTS in all, and the best LBFGS_STARTS combinations are refined by L-BFGS;
#: beyond, discrete local search (``optimize_acqf_mixed_alternating``).
ENUMERATE_LIMIT = 256
RAW_POINTS = 1024
LBFGS_STARTS = 16
#: The same with several objectives: one qLogNEHVI evaluation costs several of qLogNEI
#: (a box decomposition of the Pareto front per pending point). At 40 trials, 3 pending,
#: lora.yaml's 75 combinations, two objectives and a constraint, CPU per ask: 1,024 raw
#: points and 16 L-BFGS runs 2.2 s (loaded machine); 256 and 4: 0.99 s (0.45 of it the
#: acquisition); 128 and 4: 0.83 s (0.30) (benchmarks/suggest_latency.py, docs/samplers.md).
RAW_POINTS_SEVERAL = 128
LBFGS_STARTS_SEVERAL = 4
#: The budget per suggestion: 50 L-BFGS steps bring the GP's marginal likelihood within
#: 0.3% of convergence (docs/samplers.md); 64 Sobol MC samples; the rest keeps an ask at
#: 40 trials under 1 s on 2 shared cores (benchmarks/suggest_latency.py).
FIT_MAXITER = 50
MC_SAMPLES = 64
RAW_SAMPLES_PER_COMBINATION = 16
ACQF_MAXITER = 100
#: A trial's learning curve enters the model at this many epochs at most (its last always,
#: the others spread geometrically): 40 trials x 100 epochs would be a GP of 4,000 points.
MAX_FIDELITY_POINTS_PER_TRIAL = 4
#: A large study's GP sees at most this many observations (one per finished trial; with
#: learning curves one per kept epoch), the best trials for half of them and a random
#: sample of the rest, and the acquisition the latest MAX_PENDING_POINTS running trials
#: (``model_subset``). Fewer with several objectives (one GP output per objective and
#: constraint, qLogNEHVI's box decompositions). Chosen so that an ask, alone, stays under
#: the 1.88 s that 32 slots of 60 s trials leave per trial up to 1,000 finished trials (2
#: cores, 31 running; benchmarks/suggest_latency.py --completed 1000 --pending 31,
#: docs/samplers.md section 4); without the bounds an ask took 2.4 s at 200 finished trials and 9.2 s at
#: 500 (with curves: 9.3 s at 200; 192 observations instead of 128 cost 2.3 s CPU). The
#: sampler benchmarks' searches stay below the bounds, except the ASHA one's last asks
#: (135 of 763 asks cut, at most 163 observations): its mean best after 180 epochs was
#: 0.8026 with the bound and 0.8050 without (sd 0.015-0.019; docs/samplers.md, section 1).
MAX_MODEL_POINTS = 128
MAX_MODEL_POINTS_SEVERAL = 64
MAX_MODEL_POINTS_WITH_CURVES = 128
MAX_PENDING_POINTS = 16
#: qLogNEI's baseline: the observed points most often the best under the posterior, at
#: most this many (``model_subset.likely_best``); the pending points join them. Scoring
#: the acquisition at the raw points costs about linearly in baseline + pending: in the
#: scale benchmark's study at 200 finished trials, 31 running, 1.97 s CPU with BoTorch's
#: pruning (45 kept + 16 pending), 0.77 s with 16 + 16 (replayed on a loaded machine).
#: The ASHA benchmark's searches pass it in 573 of 673 asks (up to 71 kept): mean best
#: after 180 epochs 0.7982 (sd 0.0204) against 0.8026 (0.0188) unbounded, after 90 0.7895
#: against 0.7753, same seeds 0-9, paired differences -0.040 to +0.047; ask p95 1.57 s
#: against 3.11 s (benchmarks/samplers_fidelity.py --samplers botorch --reps 10 --concurrency 1).
MAX_BASELINE_POINTS = 16
#: Beyond ENUMERATE_LIMIT: on search_spaces/lora.yaml's 75 combinations (when the limit
#: was 64), 256 raw samples, 4 restarts and 8 alternating steps took 0.40 s CPU (one
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
        n_startup_trials: trials sampled by ``independent_sampler`` before the model is used
            (started trials, running ones included; the model also waits for 2 finished ones,
            stopped ones counting when ``fidelity_steps`` is set).
        seed: seeds the startup/independent sampler and every acquisition optimisation.
        independent_sampler: samples the startup trials and any parameter outside the
            relative search space (conditional ones); a seeded ``RandomSampler`` by default.
        fidelity_steps: the number of epochs a full trial trains; set, every reported
            epoch of every trial is an observation at fidelity ``epoch / fidelity_steps``
            (one objective only; see the module docstring). None: final values only.
    """

    def __init__(
        self,
        *,
        n_startup_trials: int = 10,
        seed: int | None = None,
        independent_sampler: BaseSampler | None = None,
        fidelity_steps: int | None = None,
    ) -> None:
        self._n_startup_trials = n_startup_trials
        self._fidelity_steps = fidelity_steps if fidelity_steps and fidelity_steps > 1 else None
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
        trials = [
            t
            for t in study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            )
            if t.number != trial.number and search_space.keys() <= t.params.keys()
        ]
        # Trials still running, with every parameter chosen: the points other workers train
        # now (the latest MAX_PENDING_POINTS of them; model_subset says why).
        running = recent_pending([t for t in trials if t.state == TrialState.RUNNING], MAX_PENDING_POINTS)
        space = MixedSpace.of(search_space)
        pending = space.encode([t.params for t in running]) if running else None
        if self._fidelity_steps is not None and len(study.directions) == 1:
            steps = self._fidelity_steps
            finished = [t for t in trials if t.state != TrialState.RUNNING]
            limit = max(MAX_MODEL_POINTS_WITH_CURVES, self._n_startup_trials)
            finished = model_trials(
                finished, study.directions, limit, self._rng, lambda t: max(1, len(learning_curve(t, steps)))
            )
            in_study_order = sorted(finished + running, key=lambda t: t.number)
            data = TrainingData.of_curves(space, in_study_order, study.directions[0], steps)
        else:
            completed = [t for t in trials if t.state == TrialState.COMPLETE and all(np.isfinite(t.values))]
            several = len(study.directions) > 1
            limit = max(MAX_MODEL_POINTS_SEVERAL if several else MAX_MODEL_POINTS, self._n_startup_trials)
            completed = model_trials(completed, study.directions, limit, self._rng)
            data = TrainingData.of_final_values(space, completed, study.directions)
        # The random start counts the trials running now (module docstring): with c at once,
        # counting finished trials only would make it n_startup_trials + c - 1 random trials.
        running_now = sum(t.state == TrialState.RUNNING for t in trials)
        if data is None or data.trials < 2 or data.trials + running_now < self._n_startup_trials:
            return {}
        seed = int(self._rng.randint(2**31 - 1))
        return space.decode(suggest(space, data, pending, seed))

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


@dataclass(frozen=True)
class TrainingData:
    """The model's data: finished trials' outcomes, or every epoch of every trial.

    ``x`` holds the objectives' rows and ``constraint_x`` the constraints' (the same rows
    for final values; with learning curves one row per reported epoch against one per
    trial). With learning curves both end in a fidelity column, and ``baseline`` (the
    trials' points, at full fidelity) is what the noisy acquisition integrates over."""

    x: torch.Tensor
    objectives: np.ndarray  # (len(x), n_objectives), every objective to be maximised
    constraint_x: torch.Tensor
    constraints: np.ndarray  # (len(constraint_x), n_constraints) <= 0 feasible; maybe 0 columns
    baseline: torch.Tensor
    trials: int  # how many trials the rows come from (the startup rule counts them)
    fidelity: bool = False

    @classmethod
    def of_final_values(
        cls, space: MixedSpace, completed: list[FrozenTrial], directions: Sequence[StudyDirection]
    ) -> TrainingData | None:
        known = [t for t in completed if not t.user_attrs.get(UNKNOWN_OBJECTIVES_ATTR)]
        if not known:
            return None
        observed = Observations.of(known, directions)
        x = space.encode([t.params for t in known])
        if len(known) == len(completed) or observed.constraints.shape[1] == 0:
            return cls(x, observed.objectives, x, observed.constraints, x, len(known))
        # trials never trained: their constraints are data, their placeholder values are not
        constraint_x = space.encode([t.params for t in completed])
        constraints = Observations.of(completed, directions).constraints
        return cls(x, observed.objectives, constraint_x, constraints, x, len(known))

    @classmethod
    def of_curves(
        cls, space: MixedSpace, trials: list[FrozenTrial], direction: StudyDirection, fidelity_steps: int
    ) -> TrainingData | None:
        """Every reported epoch of complete, stopped and running trials (at most
        ``MAX_FIDELITY_POINTS_PER_TRIAL`` per trial); a complete trial's value is its row at
        full fidelity. None until a trial has completed: the model would extrapolate every
        prediction at full fidelity from early epochs alone."""
        sign = 1.0 if direction == StudyDirection.MAXIMIZE else -1.0
        curves = [learning_curve(t, fidelity_steps) for t in trials]
        if not any(t.state == TrialState.COMPLETE and curve for t, curve in zip(trials, curves, strict=True)):
            return None
        finished = [i for i, t in enumerate(trials) if t.state != TrialState.RUNNING and curves[i]]
        observed = [i for i, curve in enumerate(curves) if curve]
        points = space.encode([t.params for t in trials])
        rows = [(i, s, sign * v) for i in observed for s, v in curves[i]]  # (trial, fidelity, value)
        x = _with_fidelity(points[[i for i, _, _ in rows]], [s for _, s, _ in rows])
        objectives = np.array([[v] for _, _, v in rows], dtype=float)
        # constraints: one row per finished trial (never-trained ones too), at the fidelity of its last report
        constrained = [
            i
            for i, t in enumerate(trials)
            if t.state != TrialState.RUNNING
            and t.constraints
            and (curves[i] or t.user_attrs.get(UNKNOWN_OBJECTIVES_ATTR))
        ]
        keys = sorted(set.intersection(*(set(trials[i].constraints) for i in constrained))) if constrained else []
        constrained = constrained if keys else []
        constraint_x = _with_fidelity(
            points[constrained], [curves[i][-1][0] if curves[i] else 1.0 for i in constrained]
        )
        constraints = np.array([[trials[i].constraints[k] for k in keys] for i in constrained], dtype=float)
        constraints = constraints.reshape(len(constrained), len(keys))
        baseline = _with_fidelity(points[observed], [1.0] * len(observed))
        return cls(x, objectives, constraint_x, constraints, baseline, len(finished), fidelity=True)


def _with_fidelity(points: torch.Tensor, fidelities: list[float]) -> torch.Tensor:
    import torch

    column = torch.tensor(fidelities, dtype=torch.float64).reshape(len(fidelities), 1)
    return torch.cat([points, column], dim=1)  # points: (len(fidelities), columns)


def learning_curve(trial: FrozenTrial, fidelity_steps: int) -> list[tuple[float, float]]:
    """(fidelity, value) of a trial's reported epochs, at most ``MAX_FIDELITY_POINTS_PER_TRIAL``
    of them, the last kept; a complete trial ends at fidelity 1 with its value. A trial
    never trained (its values placeholders) has none."""
    if trial.user_attrs.get(UNKNOWN_OBJECTIVES_ATTR):
        return []
    steps = sorted(step for step, value in trial.intermediate_values.items() if math.isfinite(value))
    curve = [(min(step / fidelity_steps, 1.0), trial.intermediate_values[step]) for step in steps]
    if trial.state == TrialState.COMPLETE:
        if trial.values is None or not all(math.isfinite(v) for v in trial.values):
            return []
        curve = [(s, v) for s, v in curve if s < 1.0] + [(1.0, trial.values[0])]
    if len(curve) > MAX_FIDELITY_POINTS_PER_TRIAL:
        keep = np.unique(np.geomspace(1, len(curve), MAX_FIDELITY_POINTS_PER_TRIAL).round().astype(int) - 1)
        curve = [curve[k] for k in keep]
    return curve


def suggest(space: MixedSpace, data: TrainingData, pending: torch.Tensor | None, seed: int) -> torch.Tensor:
    """The next point (one row in ``space``'s columns): fit, build the acquisition, optimise it."""
    import botorch.optim  # noqa: F401  (loads scipy's OpenBLAS, so threadpoolctl sees it)
    import torch
    from botorch.acquisition.fixed_feature import FixedFeatureAcquisitionFunction
    from threadpoolctl import threadpool_limits

    # One BLAS thread: 2 OpenBLAS threads on a busy 2-core machine made each L-BFGS-B
    # step ~5 ms instead of ~0.03 ms (docs/samplers.md).
    with threadpool_limits(limits=1), torch.random.fork_rng():
        torch.manual_seed(seed)
        model = fit_model(space, data)
        if not data.fidelity:
            return optimize(acquisition(model, data, pending), space, seed, several=data.objectives.shape[1] > 1)
        if pending is not None:
            pending = torch.cat([pending, torch.ones(len(pending), 1, dtype=torch.float64)], dim=1)
        full = len(space.columns)
        at_full_fidelity = FixedFeatureAcquisitionFunction(
            acquisition(model, data, pending), d=full + 1, columns=[full], values=[1.0]
        )
        return optimize(at_full_fidelity, space, seed, several=False)


def fit_model(space: MixedSpace, data: TrainingData) -> Model:
    """One objective: Optuna's GP for it and, if constrained, one ``MixedSingleTaskGP`` for
    the constraints beside it (a ``ModelListGP``). Several: one ``MixedSingleTaskGP`` over
    objectives and constraints when they share their rows, else one for each."""
    from botorch.models import ModelListGP

    categorical = list(space.dims("categorical"))
    if data.objectives.shape[1] == 1:
        objective = _optuna_gp(data.x, data.objectives, categorical)
        if data.constraints.shape[1] == 0:
            return objective
        return ModelListGP(objective, _fitted_gp(data.constraint_x, data.constraints, categorical))
    if data.x is data.constraint_x:
        return _fitted_gp(data.x, np.concatenate([data.objectives, data.constraints], axis=1), categorical)
    if data.constraints.shape[1] == 0:
        return _fitted_gp(data.x, data.objectives, categorical)
    return ModelListGP(
        _fitted_gp(data.x, data.objectives, categorical), _fitted_gp(data.constraint_x, data.constraints, categorical)
    )


def _fitted_gp(x: torch.Tensor, outcomes: np.ndarray, categorical: list[int]) -> SingleTaskGP:
    """``MixedSingleTaskGP`` where there are categorical columns, else ``SingleTaskGP``
    (see the module docstring for the kernel tried instead)."""
    import torch
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import MixedSingleTaskGP, SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    y = torch.tensor(outcomes, dtype=torch.float64)
    model: SingleTaskGP
    if categorical:
        model = MixedSingleTaskGP(x, y, cat_dims=categorical, outcome_transform=Standardize(m=y.size(-1)))
    else:
        model = SingleTaskGP(x, y, outcome_transform=Standardize(m=y.size(-1)))
    fit_gpytorch_mll(
        ExactMarginalLogLikelihood(model.likelihood, model), optimizer_kwargs={"options": {"maxiter": FIT_MAXITER}}
    )
    return model


def _optuna_gp(x: torch.Tensor, outcomes: np.ndarray, categorical: list[int]) -> SingleTaskGP:
    """Optuna ``GPSampler``'s model (optuna/_gp/gp.py, prior.py): a scaled Matern-5/2 of
    ``sum_i d_i**2 / l_i**2`` over every column (``d_i`` a categorical column's 0 or 1),
    Optuna's priors on the lengthscales and the scale, BoTorch's default noise prior."""
    import torch
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.constraints import GreaterThan
    from gpytorch.kernels import ScaleKernel
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from gpytorch.priors import GammaPrior

    y = torch.tensor(outcomes, dtype=torch.float64)
    batch_shape = torch.Size([y.size(-1)]) if y.size(-1) > 1 else torch.Size()
    kernel = _optuna_kernel_class()(
        categorical,
        ard_num_dims=x.size(-1),
        batch_shape=batch_shape,
        lengthscale_prior=_optuna_lengthscale_prior_class()(),
        lengthscale_constraint=GreaterThan(1e-4, transform=None, initial_value=1.0),
    )
    covar = ScaleKernel(
        kernel,
        batch_shape=batch_shape,
        outputscale_prior=GammaPrior(2.0, 1.0),
        outputscale_constraint=GreaterThan(1e-6, transform=None, initial_value=1.0),
    )
    model = SingleTaskGP(x, y, covar_module=covar, outcome_transform=Standardize(m=y.size(-1)))
    fit_gpytorch_mll(
        ExactMarginalLogLikelihood(model.likelihood, model), optimizer_kwargs={"options": {"maxiter": FIT_MAXITER}}
    )
    return model


@functools.cache
def _optuna_kernel_class() -> type:
    """The kernel class, made on first use: gpytorch is imported only when a model is fitted.
    Handwritten: gpytorch's kernels take one distance over all columns, or sum/multiply
    separate kernels (``MixedSingleTaskGP``); none puts Hamming and squared distances
    under one Matern, as Optuna's GP does."""
    import torch
    from gpytorch.kernels import Kernel

    class OptunaKernel(Kernel):
        """Matern-5/2 of ``sum_i d_i**2 / l_i**2``: ``d_i`` is a continuous column's difference,
        a categorical column's 0 (same choice) or 1 (Hamming distance), as Optuna's GP."""

        has_lengthscale = True

        def __init__(self, categorical: list[int], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.categorical = categorical

        def forward(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, **params: Any) -> torch.Tensor:
            diff = x1.unsqueeze(-2) - x2.unsqueeze(-3)
            squared = diff.square()
            if self.categorical:
                squared[..., self.categorical] = (diff[..., self.categorical] != 0).to(diff)
            scaled = (squared / self.lengthscale.unsqueeze(-2).square()).sum(-1)
            # clamped: sqrt's gradient at distance 0 would be infinite
            r = torch.sqrt(5 * scaled.clamp_min(1e-30))
            value = torch.exp(-r) * (1 + r + r.square() / 3)
            return torch.diagonal(value, dim1=-2, dim2=-1) if diag else value

    return OptunaKernel


@functools.cache
def _optuna_lengthscale_prior_class() -> type:
    import torch
    from gpytorch.priors import Prior
    from torch.distributions import constraints

    class OptunaLengthscalePrior(Prior):
        """Optuna's prior on ``theta = 1 / l**2``, ``log p = -(0.1 / theta + 0.1 * theta)``,
        written in the lengthscale without a Jacobian, as Optuna's MAP fit adds it."""

        arg_constraints: ClassVar[dict[str, Any]] = {}
        support = constraints.positive

        def __init__(self) -> None:
            torch.nn.Module.__init__(self)
            torch.distributions.Distribution.__init__(self, batch_shape=torch.Size(), validate_args=False)
            self._transform = None

        def log_prob(self, x: torch.Tensor) -> torch.Tensor:
            return -(0.1 * x.square() + 0.1 / x.square())

    return OptunaLengthscalePrior


def acquisition(model: Model, data: TrainingData, pending: torch.Tensor | None) -> AcquisitionFunction:
    """qLogNEI (one objective) or qLogNEHVI (several): both integrate over the noise at the
    observed points (``data.baseline``; qLogNEI's the ``MAX_BASELINE_POINTS`` most likely
    best, qLogNEHVI's pruned by BoTorch) instead of trusting the best observed value."""
    import torch
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
    from botorch.acquisition.multi_objective.objective import IdentityMCMultiOutputObjective
    from botorch.acquisition.objective import GenericMCObjective
    from botorch.sampling import SobolQMCNormalSampler

    n_objectives = data.objectives.shape[1]
    constraints: list[Callable[[torch.Tensor], torch.Tensor]] | None = [
        functools.partial(_outcome, index=n_objectives + i) for i in range(data.constraints.shape[1])
    ] or None
    sampler = SobolQMCNormalSampler(torch.Size([MC_SAMPLES]))
    if n_objectives == 1:
        objective = GenericMCObjective(functools.partial(_outcome, index=0))
        return qLogNoisyExpectedImprovement(
            model=model,
            X_baseline=likely_best(model, data.baseline, objective, constraints, MAX_BASELINE_POINTS),
            sampler=sampler,
            X_pending=pending,
            prune_baseline=False,  # likely_best has pruned it
            objective=objective,
            constraints=constraints,
        )
    return qLogNoisyExpectedHypervolumeImprovement(
        model=model,
        ref_point=reference_point(Observations(data.objectives, data.constraints)).tolist(),
        X_baseline=data.baseline,
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


def optimize(acqf: AcquisitionFunction, space: MixedSpace, seed: int, *, several: bool) -> torch.Tensor:
    """Maximise the acquisition over ``space``, discrete columns kept discrete."""
    from botorch.optim.optimize_mixed import optimize_acqf_mixed_alternating

    if space.combinations() <= ENUMERATE_LIMIT:
        return optimize_every_combination(
            acqf,
            space,
            seed,
            raw_points=RAW_POINTS_SEVERAL if several else RAW_POINTS,
            starts=LBFGS_STARTS_SEVERAL if several else LBFGS_STARTS,
        )
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


def optimize_every_combination(
    acqf: AcquisitionFunction, space: MixedSpace, seed: int, *, raw_points: int, starts: int
) -> torch.Tensor:
    """Every combination of discrete values scored, the best ones with the continuous
    columns optimised.

    What ``optimize_acqf_mixed`` does with one ``fixed_features`` per combination, but in
    one batch: that loops over the combinations, one ``optimize_acqf`` each (15
    combinations took ~15x one continuous optimisation); here each combination is scored
    at the same Sobol points of the continuous columns, and the best point of each of the
    ``starts`` best combinations starts one L-BFGS run, all runs optimised together with
    the discrete columns fixed per run (with at most ``starts`` combinations, every one is
    refined). ``raw_points`` bounds the scored points (at most
    ``RAW_SAMPLES_PER_COMBINATION`` per combination)."""
    import torch
    from botorch.generation.gen import gen_candidates_scipy

    discrete = [i for i, c in enumerate(space.columns) if c.kind != "continuous"]
    continuous = space.continuous
    combos = torch.tensor(list(itertools.product(*(space.columns[i].values for i in discrete))), dtype=torch.float64)
    combos = combos.reshape(len(combos), len(discrete))
    if not continuous:
        points = combos
    else:
        per_combination = max(1, min(RAW_SAMPLES_PER_COMBINATION, raw_points // len(combos)))
        raw = (
            torch.quasirandom.SobolEngine(len(continuous), scramble=True, seed=seed)
            .draw(per_combination)
            .to(torch.float64)
        )
        grid = torch.empty(len(combos), len(raw), len(space.columns), dtype=torch.float64)
        grid[..., discrete] = combos[:, None, :]
        grid[..., continuous] = raw[None, :, :]
        with torch.no_grad():
            values = _evaluate(acqf, grid.reshape(-1, 1, len(space.columns))).reshape(len(combos), len(raw))
        best, at = values.max(dim=1)  # the best raw point of each combination
        chosen = best.topk(min(starts, len(combos))).indices
        start_points = grid[chosen, at[chosen]]
        bounds = space.bounds()
        points, _ = gen_candidates_scipy(
            start_points.unsqueeze(1),
            acqf,
            lower_bounds=bounds[0],
            upper_bounds=bounds[1],
            fixed_features={i: start_points[:, i] for i in discrete},
            options={"maxiter": ACQF_MAXITER},
        )
        points = points.squeeze(1)
    with torch.no_grad():
        values = _evaluate(acqf, points.reshape(-1, 1, len(space.columns)))
    return points[values.argmax()]


def _evaluate(acqf: AcquisitionFunction, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    import torch

    return torch.cat([acqf(chunk) for chunk in x.split(batch)])
