"""What would settle an INCONCLUSIVE claim: more seeds, more test examples, or neither.

The variance of a claim's estimate has two parts (``judge.examples``): the seeds'
``sigma_s^2 / S`` and the test examples' ``sigma_e^2 / N``. More seeds shrink only the
first, so when the second alone keeps the interval across the boundary, no number of
seeds can settle the claim and saying "about 40 seeds" would waste a week of GPU time.

For 80% power at level alpha, if the truth were the current estimate, the distance
``delta`` from the estimate to its nearest boundary must reach
``(z_{1-alpha} + z_{0.8}) * sqrt(sigma_s^2 / S + sigma_e^2 / N)``. Solved for S at the
current N (with Guenther's small-sample t correction ``+ z_{1-alpha}^2 / 2``), or, when
the example part alone is too large, for N at the current S. Written by hand: it is the
textbook normal-approximation sample size (statsmodels' power classes solve one
variance component at a time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import special

from orchestrator.judge.stats import Estimate

POWER = 0.80  # the power a settling budget aims for

# Beyond this many seeds or examples the answer is "not within reach", not a number.
OUT_OF_REACH = 10**6


@dataclass(frozen=True)
class SettlingBudget:
    """``seeds``: seeds per arm that would likely settle the claim on the current test
    set (None: seeds alone cannot); ``examples``: test examples that would, at
    ``examples_at_seeds`` seeds per arm (None: not needed, or not within reach);
    ``text``: the same in words, for the verdict's reason."""

    seeds: int | None
    examples: int | None
    examples_at_seeds: int | None
    text: str


def settling_budget(distance: float, est: Estimate, alpha: float) -> SettlingBudget:
    """The budget for a claim whose estimate is ``distance`` from its nearest boundary."""
    seeds_now = max(est.n.values()) if est.n else 0
    if distance <= 0.0 or not math.isfinite(distance):
        return SettlingBudget(
            None,
            None,
            None,
            "the estimate sits on the boundary, so neither more seeds nor more test examples are likely to settle it",
        )
    z_alpha = float(special.ndtri(1.0 - alpha))
    k = (z_alpha + float(special.ndtri(POWER))) ** 2
    per_seed = est.seeds_part * seeds_now  # sigma_s^2: the variance of V for one seed of every arm
    needed_room = distance**2 / k  # the largest variance of V_hat that would settle it
    example_part = est.example_variance
    if example_part < needed_room:
        if per_seed <= 0.0:
            return SettlingBudget(None, None, None, "")
        seeds = per_seed / (needed_room - example_part) + z_alpha**2 / 2.0
        if seeds <= OUT_OF_REACH:
            count = max(math.ceil(seeds), seeds_now + 1, 2)
            return SettlingBudget(count, None, None, f"about {count} seeds per arm would likely settle it")
    if est.examples == 0 or est.example_sd <= 0.0:
        return SettlingBudget(None, None, None, "")
    seeds_part = per_seed / seeds_now if seeds_now else 0.0
    why = (
        f"more seeds alone cannot settle it: the sampling error of the {est.examples} test examples "
        f"(se {math.sqrt(example_part):.2g}) is too large for the {distance:.2g} between the estimate and the boundary"
    )
    if seeds_part < needed_room:
        examples = math.ceil(est.example_sd**2 / (needed_room - seeds_part))
        if examples <= OUT_OF_REACH:
            return SettlingBudget(
                None,
                examples,
                seeds_now,
                f"{why}; about {examples} test examples would likely settle it at {seeds_now} seeds per arm",
            )
    examples = math.ceil(est.example_sd**2 / needed_room)
    if examples <= OUT_OF_REACH:
        return SettlingBudget(
            None, examples, None, f"{why}; about {examples} test examples would, with many more seeds"
        )
    return SettlingBudget(
        None, None, None, f"{why}, and no test set within reach would: the margin is finer than the metric can resolve"
    )
