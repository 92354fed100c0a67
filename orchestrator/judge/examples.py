"""The test set's share of a claim's variance: per-example outcomes, paired by example.

A confirmation run's ``test_accuracy`` is the mean of its correctness on the N test
examples, and every arm is scored on the same N. Seed-to-seed spread is one source of
variance; the other is which N examples the test set happened to hold (the claim is
about the task, not about these examples). Bouthillier et al. (MLSys 2021) count both;
a t interval over seeds alone ignores the second, which for ~1,000 examples is about a
point of accuracy, as large as the margins the claims state.

The estimator (written by hand: scipy and statsmodels have no crossed seeds x examples
design for a linear combination of arms). Write the claim's quantity as
``V = sum_r c_r * metric_r``; for the references with per-example values ``Y_r[s, i]``
(seed s, example i), take each example's contribution averaged over its arm's seeds,
``z_i = sum_r c_r * mean_s Y_r[s, i]``. The arms are paired by example because every
arm is scored on the same examples, so ``z_i`` carries the correlation between arms
(two arms right on the same easy examples cancel out). Then

    Var(V_hat) ~= seed part + var_i(z_i) / N.

The seed part is today's t variance across seeds. Both parts count the seed x example
interaction once (``sigma_e^2 / (S N)``): the sum is conservative by that term, is never
negative, and needs no pairing by seed (Welch's case works the same). The seed part is
also floored at what the interaction alone puts into it, ``MS_res / N`` (the residual
mean square of the two-way seeds x examples table): when 2 seeds tie on a discrete
accuracy, their 0 spread is not evidence of no seed variance. Degrees of freedom:
Welch-Satterthwaite over the seed part (its own df) and the example part (N - 1).

Only metrics that are means of per-example values qualify (accuracy: correctness;
loss: per-example cross-entropy); F1 and MCC are not means and keep seed variance only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import numpy as np

from orchestrator.claims import Claim, MetricRef

PerExample = Mapping[str, Mapping[str, Mapping[int, "np.ndarray"]]]
"""arm -> metric -> seed -> per-example values (in the test split's order) whose mean is the metric."""

# A per-example array whose mean differs from the metric the run reported by more than
# this is not the record of that evaluation (the loss is stored to 5 decimals).
MEAN_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExampleComponent:
    """What the test examples add to a claim's variance.

    ``variance``: var_i(z_i) / N, the example part of Var(V_hat); ``per_example_sd``: the
    sd of z_i (the unit for "how many examples would settle it"); ``seed_floor``: the
    least per-seed variance of V that the seed x example interaction implies (by arm:
    arm -> floor of that arm's part; one key ``"*"`` when all arms share their seeds);
    ``examples``: N; ``references``: the references it covers.
    """

    variance: float
    per_example_sd: float
    seed_floor: dict[str, float]
    examples: int
    references: tuple[MetricRef, ...]


def component(
    claim: Claim, seeds_by_ref: Mapping[MetricRef, Mapping[int, float]], per_example: PerExample | None
) -> ExampleComponent | None:
    """The example part for a claim, or None when no reference has usable per-example data.

    ``seeds_by_ref``: each reference's usable seed -> value (the values the seed part
    uses). A reference qualifies when it has an array for every one of those seeds, all
    of the claim's arrays have one length, and each array's mean is the value its run
    reported (else it is someone else's record and is not used).
    """
    if not per_example:
        return None
    coefficients = claim.expr.coefficients
    arrays: dict[MetricRef, np.ndarray] = {}  # ref -> (seeds, N) in the seed order of seeds_by_ref
    for ref, values in seeds_by_ref.items():
        stack = _stack(per_example, ref, values)
        if stack is not None:
            arrays[ref] = stack
    lengths = {a.shape[1] for a in arrays.values()}
    if not arrays or len(lengths) != 1:
        return None
    n_examples = lengths.pop()
    if n_examples < 2:
        return None
    z = sum(coefficients[ref] * a.mean(axis=0) for ref, a in arrays.items())
    variance = float(np.var(z, ddof=1)) / n_examples
    return ExampleComponent(
        variance,
        math.sqrt(max(0.0, variance * n_examples)),
        _seed_floors(arrays, coefficients, seeds_by_ref),
        n_examples,
        tuple(arrays),
    )


def _stack(per_example: PerExample, ref: MetricRef, values: Mapping[int, float]) -> np.ndarray | None:
    by_seed = (per_example.get(ref.arm) or {}).get(ref.metric) or {}
    if not values or any(seed not in by_seed for seed in values):
        return None
    rows = [np.asarray(by_seed[seed], dtype=float) for seed in values]
    if len({row.shape for row in rows}) != 1 or rows[0].ndim != 1:
        return None
    stack = np.vstack(rows)
    if not np.all(np.isfinite(stack)):
        return None
    reported = np.array(list(values.values()), dtype=float)
    if np.any(np.abs(stack.mean(axis=1) - reported) > MEAN_TOLERANCE):
        return None
    return stack


def _seed_floors(
    arrays: Mapping[MetricRef, np.ndarray],
    coefficients: Mapping[MetricRef, float],
    seeds_by_ref: Mapping[MetricRef, Mapping[int, float]],
) -> dict[str, float]:
    """Least per-seed variance the seed x example interaction implies: MS_res / N of the
    table z[s, i] (of the paired quantity when every arm has the same seeds, else of each
    arm's part). Needs 2 seeds or more."""
    seed_sets = {tuple(seeds_by_ref[ref]) for ref in arrays}
    if len(seed_sets) == 1:
        # arrays is never empty, so sum() returns an array, never its start value 0
        table = cast(np.ndarray, sum(coefficients[ref] * a for ref, a in arrays.items()))
        return {"*": _residual_mean_square(table) / table.shape[1]}
    floors: dict[str, float] = {}
    for arm in dict.fromkeys(ref.arm for ref in arrays):
        table = cast(np.ndarray, sum(coefficients[ref] * a for ref, a in arrays.items() if ref.arm == arm))
        floors[arm] = _residual_mean_square(table) / table.shape[1]
    return floors


def _residual_mean_square(table: np.ndarray) -> float:
    """Residual mean square of a two-way (seeds x examples) table without replication."""
    seeds, examples = table.shape
    if seeds < 2:
        return 0.0
    residual = table - table.mean(axis=1, keepdims=True) - table.mean(axis=0, keepdims=True) + table.mean()
    return float(np.sum(residual**2)) / ((seeds - 1) * (examples - 1))
