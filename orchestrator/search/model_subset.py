"""Which trials a model-based sampler's GP sees once a study is large (``sampler: botorch``).

An exact GP costs O(n^3) to fit and O(n^2) per acquisition evaluation, and qLogNEI /
qLogNEHVI evaluate the candidate jointly with every pending point: with 31 trials running
and 200 finished, ``botorch`` took 0.70 s per suggestion (p50), growing 10 ms per finished
trial (docs/scale.md), so at 32 slots it fell behind 60 s trials from n = 199. Two bounds
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

Handwritten: neither BoTorch nor Optuna subsample a study's history (Optuna's ``GPSampler``
fits every trial; BoTorch leaves data to the caller).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

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
