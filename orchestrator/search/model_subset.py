"""Which trials a model-based sampler's GP sees once a study is large (``sampler: botorch``).

An exact GP costs O(n^3) to fit and O(n^2) per acquisition evaluation, and qLogNEI /
qLogNEHVI evaluate the candidate jointly with every pending point: with 31 trials running
and 200 finished, ``botorch`` took 0.70 s per suggestion (p50), growing 10 ms per finished
trial (docs/scale.md), so at 32 slots it fell behind 60 s trials from n = 199. Three bounds
keep a suggestion's cost from growing with the study's size as the GP's would:

- ``model_trials``: beyond ``limit`` observations (one per finished trial; with learning
  curves one per reported epoch kept), the best trials up to half of them (feasible
  before infeasible; with several objectives the fewest trials dominating it) and a
  random sample of the rest. The best ones are where the acquisition decides between
  neighbours; the random rest keeps the model's picture of the whole space (a subset of
  only the best would make the GP believe the whole space is good). A new sample per
  suggestion (seeded by the sampler), so over many suggestions every trial is seen.
- ``recent_pending``: the ``limit`` most recently started running trials. A pending point
  only matters where it is near the next candidate, and the newest ones were suggested by
  the model closest to the current one, i.e. the points this suggestion would repeat.
- ``likely_best``: of the acquisition's baseline (the observed points, among which
  qLogNEI takes the incumbent in each posterior sample), the ``limit`` points most often
  the best. Each acquisition evaluation is a joint posterior over the baseline, the
  pending points and the candidate, so its cost grows with the baseline; BoTorch's
  pruning keeps every point that is the best in any of 2,048 samples. In the scale
  benchmark's study (a deterministic objective, most trials stopped after one of three
  epochs; 250 finished, 31 running) that was 46-52 of ~60 points, and an ask took 2.9-3.2 s
  CPU against 1.9-2.4 s on benchmarks/suggest_latency.py's study (22-32 kept), 1.4-1.6 s
  with 16 (same machine and load). The points left out were rarely the best and then
  barely: with 16 of 57 kept, the incumbent's value in a sample was 0.0007 lower on
  average (1% of the objective's standard deviation).

Handwritten: neither BoTorch nor Optuna subsample a study's history (Optuna's ``GPSampler``
fits every trial; BoTorch leaves data to the caller). ``likely_best`` is BoTorch's
``prune_inferior_points`` with a bound: its own bound (``max_frac``) keeps, in botorch 0.18,
positions in its sorted counts instead of the points they count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    import torch
    from botorch.acquisition.objective import MCAcquisitionObjective
    from botorch.models.model import Model

#: A trial with this user attribute was told placeholder values (never trained, its
#: objectives unknown: ``orchestrator.execute.searcher`` sets it); only its constraints are data.
UNKNOWN_OBJECTIVES_ATTR = "orchestrate.unknown_objectives"


def model_trials(
    trials: list[FrozenTrial],
    directions: Sequence[StudyDirection],
    limit: int,
    rng: np.random.RandomState,
    points: Callable[[FrozenTrial], int] = lambda trial: 1,
) -> list[FrozenTrial]:
    """``trials`` (finished ones) whose GP observations, ``points`` per trial, number at
    most ``limit``, in their original order: the best trials up to half of it, then a
    random sample of the others (see the module docstring). ``rng`` is not drawn from
    while everything fits."""
    sizes = np.array([points(t) for t in trials], dtype=int)
    if sizes.sum() <= limit:
        return trials
    order = np.lexsort((np.arange(len(trials)), _dominated_by(trials, directions), ~_feasible(trials)))
    best = order[np.cumsum(sizes[order]) <= limit // 2]  # a prefix: the sums grow
    rest = rng.permutation(order[len(best) :])
    sampled = rest[np.cumsum(sizes[rest]) <= limit - sizes[best].sum()]
    return [trials[i] for i in sorted(np.concatenate([best, sampled]).tolist())]


def recent_pending(running: list[FrozenTrial], limit: int) -> list[FrozenTrial]:
    """The ``limit`` running trials started last (highest trial numbers)."""
    return sorted(running, key=lambda t: t.number)[-limit:] if len(running) > limit else running


def likely_best(
    model: Model,
    points: torch.Tensor,
    objective: MCAcquisitionObjective,
    constraints: list[Callable[[torch.Tensor], torch.Tensor]] | None,
    limit: int,
    samples: int = 2048,
) -> torch.Tensor:
    """The rows of ``points`` that are the best (the highest ``objective`` among feasible
    ones) in some of ``samples`` joint posterior samples, at most ``limit`` of them: the
    most often best, in their original order. Infeasible points rank below feasible ones;
    where no sample has a feasible point, the closest to feasible win, as in BoTorch."""
    import torch
    from botorch.sampling import SobolQMCNormalSampler
    from botorch.utils.objective import compute_feasibility_indicator, compute_smoothed_feasibility_indicator

    with torch.no_grad():
        posterior = model.posterior(points)
        drawn = SobolQMCNormalSampler(torch.Size([samples]))(posterior)  # what BoTorch's pruning draws
        values = objective(drawn, X=points)  # (samples, len(points))
        if constraints:
            feasible = compute_feasibility_indicator(constraints, drawn)
            if feasible.any():
                values = values.where(feasible, values.min() - 1)
            else:
                values = compute_smoothed_feasibility_indicator(constraints, drawn, eta=1e-3, log=True)
    counts = torch.bincount(values.argmax(dim=-1), minlength=len(points))
    kept = counts.argsort(descending=True, stable=True)[: min(limit, int((counts > 0).sum()))]
    return points[kept.sort().values]


def _values(trial: FrozenTrial, directions: Sequence[StudyDirection]) -> np.ndarray:
    """Every objective to be maximised; a stopped trial's last intermediate value stands
    for its one objective; -inf where nothing is known (never trained, failed values)."""
    sign = np.array([1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in directions])
    unknown = np.full(len(directions), -math.inf)
    if trial.user_attrs.get(UNKNOWN_OBJECTIVES_ATTR):
        return unknown
    if trial.state == TrialState.COMPLETE and trial.values is not None:
        values = sign * np.array(trial.values, dtype=float)
    elif len(directions) == 1 and trial.intermediate_values:
        values = sign * np.array([trial.intermediate_values[max(trial.intermediate_values)]], dtype=float)
    else:
        return unknown
    return np.where(np.isfinite(values), values, -math.inf)


def _dominated_by(trials: list[FrozenTrial], directions: Sequence[StudyDirection]) -> np.ndarray:
    """For each trial, how many trials are at least as good in every objective and better
    in one (one objective: how many are better). O(n^2) comparisons, in row blocks."""
    values = np.array([_values(t, directions) for t in trials])
    counts = np.empty(len(trials), dtype=int)
    for start in range(0, len(trials), 256):
        block = values[start : start + 256, None, :]  # (b, 1, m) against (1, n, m)
        dominating = (values[None] >= block).all(axis=2) & (values[None] > block).any(axis=2)
        counts[start : start + 256] = dominating.sum(axis=1)
    return counts


def _feasible(trials: list[FrozenTrial]) -> np.ndarray:
    """Every constraint ``trial.set_constraint`` stored is <= 0 (no constraints: feasible)."""
    return np.array([all(value <= 0 for value in t.constraints.values()) for t in trials], dtype=bool)
