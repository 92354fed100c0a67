"""Calibration: the judge's error rates on simulated confirmation runs are what it promises.

Confirmation results are drawn from known normal distributions where each claim is
clearly true, clearly false, or exactly on its boundary. Over SIMS simulations per case:

- a false or boundary claim is SUPPORTED at most 1 - confidence of the time (plus three
  binomial standard errors of Monte-Carlo slack);
- a true claim (or one whose non-strict boundary holds) is REFUTED at most as often;
- a clearly true claim is SUPPORTED at least POWER_FLOOR of the time. Every design below
  has a noncentral-t power of 0.93 or more at this sample size (printed next to the
  empirical rate), so 0.8 leaves room for Monte-Carlo noise and Welch's approximation
  while still failing a judge that is needlessly conservative (two-sided 95% bounds instead
  of one-sided ones would drop the 3-seed absolute threshold case to 0.75).
- a family of 3 claims at their boundaries gets any SUPPORTED at most 1 - confidence of
  the time with Holm, while judging them one by one does not keep that promise;
- accuracies on one shared test set move in steps of one example, so with 2 or 3 seeds the
  arms often differ by the same amount on every seed: such ties are not evidence of no
  variance, and a non-inferiority claim whose truth sits on its margin is still SUPPORTED
  at most 1 - confidence of the time (TIED_SIMS simulations per seed count).

Run with ``pytest -s`` to see the table of rates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats as sps

from orchestrator.claims import parse_claim
from orchestrator.judge import judge_claims

SIMS = 2000
CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
TOLERANCE = 3 * math.sqrt(ALPHA * (1 - ALPHA) / SIMS)
POWER_FLOOR = 0.80
SEEDS = list(range(1000, 1005))

MakeSamples = Callable[[np.random.Generator, float], dict]


def paired_pair(n: int, sd_shared: float, sd_own: float) -> MakeSamples:
    """Arms a, b on the same seeds; a seed effect shared by both (same data order) plus own noise."""

    def make(rng: np.random.Generator, shift: float) -> dict:
        shared = rng.normal(0.85, sd_shared, n)
        a = shared + shift + rng.normal(0, sd_own, n)
        b = shared + rng.normal(0, sd_own, n)
        return {
            "a": {"acc": dict(zip(SEEDS, a.tolist(), strict=True))},
            "b": {"acc": dict(zip(SEEDS, b.tolist(), strict=True))},
        }

    return make


def unpaired_pair(n_a: int, sd_a: float, n_b: int, sd_b: float) -> MakeSamples:
    """Arms run on different seeds, unequal sizes and spreads: Welch's territory."""

    def make(rng: np.random.Generator, shift: float) -> dict:
        a = rng.normal(0.85 + shift, sd_a, n_a)
        b = rng.normal(0.85, sd_b, n_b)
        return {
            "a": {"acc": dict(zip(range(n_a), a.tolist(), strict=True))},
            "b": {"acc": dict(zip(range(100, 100 + n_b), b.tolist(), strict=True))},
        }

    return make


def single_arm(n: int, sd: float, metric: str = "acc") -> MakeSamples:
    def make(rng: np.random.Generator, mean: float) -> dict:
        return {"a": {metric: dict(zip(SEEDS[:n], rng.normal(mean, sd, n).tolist(), strict=True))}}

    return make


@dataclass(frozen=True)
class Case:
    name: str
    claim: str
    make: MakeSamples
    method: str
    true: float  # parameter where the claim clearly holds
    false: float  # ... clearly fails
    boundary: float  # ... sits exactly on a boundary of the claim
    boundary_holds: bool  # whether the claim is true on that boundary (non-strict)
    power: float  # noncentral-t power at `true`, for the printout


def _t_power(distance: float, se: float, df: float) -> float:
    return float(sps.nct.sf(sps.t.ppf(CONFIDENCE, df), df, distance / se))


def _tost_power(d_low: float, d_high: float, se: float, df: float) -> float:
    return 1 - (1 - _t_power(d_low, se, df)) - (1 - _t_power(d_high, se, df))


PAIRED_SD = 0.004 * math.sqrt(2)
WELCH_SE = math.sqrt(0.004**2 / 4 + 0.012**2 / 6)
WELCH_DF = WELCH_SE**4 / ((0.004**2 / 4) ** 2 / 3 + (0.012**2 / 6) ** 2 / 5)

CASES = [
    Case(
        "non-inferiority, paired",
        "a.acc >= b.acc - 0.01",
        paired_pair(5, 0.01, 0.004),
        "paired t",
        true=0.0,
        false=-0.02,
        boundary=-0.01,
        boundary_holds=True,
        power=_t_power(0.01, PAIRED_SD / math.sqrt(5), 4),
    ),
    Case(
        "superiority, unpaired",
        "a.acc > b.acc",
        unpaired_pair(4, 0.004, 6, 0.012),
        "Welch t",
        true=0.02,
        false=-0.02,
        boundary=0.0,
        boundary_holds=False,
        power=_t_power(0.02, WELCH_SE, WELCH_DF),
    ),
    Case(
        "absolute threshold",
        "a.acc >= 0.9",
        single_arm(3, 0.01),
        "one-sample t",
        true=0.93,
        false=0.87,
        boundary=0.9,
        boundary_holds=True,
        power=_t_power(0.03, 0.01 / math.sqrt(3), 2),
    ),
    Case(
        "within (equivalence)",
        "a.acc within 0.02 of b.acc",
        paired_pair(5, 0.01, 0.006),
        "paired t",
        true=0.0,
        false=0.04,
        boundary=0.02,
        boundary_holds=True,
        power=_tost_power(0.02, 0.02, 0.006 * math.sqrt(2) / math.sqrt(5), 4),
    ),
    Case(
        "in range",
        "a.flops_ratio in [0.2, 0.3]",
        single_arm(5, 0.02, "flops_ratio"),
        "one-sample t",
        true=0.25,
        false=0.33,
        boundary=0.3,
        boundary_holds=True,
        power=_tost_power(0.05, 0.05, 0.02 / math.sqrt(5), 4),
    ),
]


def simulate(
    claims: list[str],
    make: MakeSamples,
    shift: float,
    seed: int,
    family_wise: bool | None = None,
    sims: int = SIMS,
    exact_metrics: dict | None = None,
) -> tuple[np.ndarray, set[str]]:
    """Verdict codes (1 SUPPORTED, -1 REFUTED, 0 INCONCLUSIVE), shape (sims, len(claims))."""
    rng = np.random.default_rng(seed)
    parsed = [parse_claim(c) for c in claims]
    codes = np.zeros((sims, len(claims)), dtype=int)
    methods: set[str] = set()
    code = {"SUPPORTED": 1, "REFUTED": -1, "INCONCLUSIVE": 0}
    for i in range(sims):
        verdicts = judge_claims(parsed, make(rng, shift), CONFIDENCE, family_wise, exact_metrics=exact_metrics)
        codes[i] = [code[v.verdict] for v in verdicts]
        methods.update(v.interval_method for v in verdicts)
    return codes, methods


def report(label: str, rate: float, extra: str = "", sims: int = SIMS) -> None:
    print(f"\n  {label:<58} {rate:6.3f}  (n={sims}) {extra}", end="")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_single_claim_error_rates_and_power(case: Case):
    seed = 20_240_611 + CASES.index(case)
    true_codes, methods = simulate([case.claim], case.make, case.true, seed)
    false_codes, _ = simulate([case.claim], case.make, case.false, seed + 100)
    edge_codes, _ = simulate([case.claim], case.make, case.boundary, seed + 200)
    assert methods == {case.method}

    power = float(np.mean(true_codes == 1))
    false_support = float(np.mean(false_codes == 1))
    edge_support = float(np.mean(edge_codes == 1))
    false_refute = float(np.mean(true_codes == -1))
    edge_refute = float(np.mean(edge_codes == -1))
    report(f"{case.name}: power (true claim SUPPORTED)", power, f"noncentral t: {case.power:.3f}")
    report(f"{case.name}: false claim SUPPORTED", false_support)
    report(f"{case.name}: boundary claim SUPPORTED", edge_support)
    report(f"{case.name}: true claim REFUTED", false_refute)
    report(f"{case.name}: boundary claim REFUTED", edge_refute)

    assert false_support <= ALPHA + TOLERANCE
    assert edge_support <= ALPHA + TOLERANCE
    assert false_refute <= ALPHA + TOLERANCE
    if case.boundary_holds:
        assert edge_refute <= ALPHA + TOLERANCE
    assert power >= POWER_FLOOR
    # a clearly false claim is refuted as readily as a true one is supported
    assert float(np.mean(false_codes == -1)) >= POWER_FLOOR
    # the test is not needlessly conservative: on the boundary, support happens about alpha of the time
    assert edge_support >= ALPHA / 2


FAMILY = [
    "a.acc >= b.acc - 0.01",  # paired non-inferiority
    "c.acc within 0.02 of b.acc",  # paired equivalence
    "a.memory_mb <= 100",  # absolute threshold on another metric of arm a
]


def family(n: int = 5) -> Callable[[np.random.Generator, tuple[float, float, float]], dict]:
    """Three arms on shared seeds; the three shifts place each claim where the test wants it."""

    def make(rng: np.random.Generator, shifts: tuple[float, float, float]) -> dict:
        shared = rng.normal(0.85, 0.01, n)
        b = shared + rng.normal(0, 0.004, n)
        a = shared + shifts[0] + rng.normal(0, 0.004, n)
        c = shared + shifts[1] + rng.normal(0, 0.004, n)
        memory = rng.normal(100 + shifts[2], 3.0, n)
        return {
            "a": {
                "acc": dict(zip(SEEDS, a.tolist(), strict=True)),
                "memory_mb": dict(zip(SEEDS, memory.tolist(), strict=True)),
            },
            "b": {"acc": dict(zip(SEEDS, b.tolist(), strict=True))},
            "c": {"acc": dict(zip(SEEDS, c.tolist(), strict=True))},
        }

    return make


def test_family_of_three_at_their_boundaries_keeps_family_wise_false_support_below_alpha():
    boundary = (-0.01, 0.02, 0.0)
    holm_codes, _ = simulate(FAMILY, family(), boundary, 7_001)
    plain_codes, _ = simulate(FAMILY, family(), boundary, 7_001, family_wise=False)
    holm_fwer = float(np.mean((holm_codes == 1).any(axis=1)))
    plain_fwer = float(np.mean((plain_codes == 1).any(axis=1)))
    report("family of 3 at boundaries: any SUPPORTED, Holm", holm_fwer)
    report("family of 3 at boundaries: any SUPPORTED, unadjusted", plain_fwer)
    assert holm_fwer <= ALPHA + TOLERANCE
    assert plain_fwer > ALPHA + TOLERANCE  # the adjustment is doing real work


def test_family_with_one_boundary_claim_supports_the_true_ones_and_not_the_boundary():
    codes, _ = simulate(FAMILY, family(), (0.0, 0.0, 0.0), 7_002)  # claims 1, 2 true; 3 on its boundary
    per_claim = (codes == 1).mean(axis=0)
    report("family, 2 true + 1 boundary: boundary claim SUPPORTED", float(per_claim[2]))
    report("family, 2 true + 1 boundary: non-inferiority SUPPORTED", float(per_claim[0]))
    report("family, 2 true + 1 boundary: equivalence SUPPORTED", float(per_claim[1]))
    assert per_claim[2] <= ALPHA + TOLERANCE
    assert per_claim[0] >= POWER_FLOOR and per_claim[1] >= POWER_FLOOR


def test_family_of_three_true_claims_is_usually_supported_in_full():
    codes, _ = simulate(FAMILY, family(), (0.0, 0.0, -12.0), 7_003)
    all_supported = float(np.mean((codes == 1).all(axis=1)))
    report("family of 3 true claims: all SUPPORTED (Holm)", all_supported)
    assert all_supported >= POWER_FLOOR


# -- discrete accuracies on a shared test set: ties across seeds ---------------------------------
TIED_SIMS = 4000
TIED_TOLERANCE = 3 * math.sqrt(ALPHA * (1 - ALPHA) / TIED_SIMS)
TEST_EXAMPLES = 1000
NON_INFERIORITY = "a.test_accuracy >= b.test_accuracy - 0.01"


def tied_accuracies(n: int, shared_flips: int = 10, own_flips: int = 3) -> MakeSamples:
    """Two LoRA arms on one fixed test set of 1,000 examples, accuracies in steps of 1/1000.

    Most examples are right (or wrong) on every seed; ``shared_flips`` hard examples come
    out right or wrong with the seed alike in both arms (the seed fixes the data order
    both share), ``own_flips`` per arm flip on their own. ``shift`` is the true difference
    E[a - b]. The difference then moves by whole examples, and with 2 seeds it is the same
    on both about 20% of the time: a tie that says nothing about the spread.
    """

    def make(rng: np.random.Generator, shift: float) -> dict:
        shared = rng.binomial(shared_flips, 0.5, n)
        b = 850 + shared + rng.binomial(own_flips, 0.5, n)
        a = 850 + round(shift * TEST_EXAMPLES) + shared + rng.binomial(own_flips, 0.5, n)
        return {
            arm: {"test_accuracy": dict(zip(SEEDS[:n], (correct / TEST_EXAMPLES).tolist(), strict=True))}
            for arm, correct in (("a", a), ("b", b))
        }

    return make


@pytest.mark.parametrize("n", [2, 3])
def test_discrete_accuracies_with_ties_on_a_shared_test_set_boundary_claim_supported_at_most_alpha(n):
    """The true difference sits on the margin (-0.01). Before, a tie across the seeds was
    judged "exact (no variance)", and held whenever the tied difference was >= -0.01:
    false SUPPORTED 0.168 (n = 2) and 0.073 (n = 3), false REFUTED 0.061 (n = 2), measured
    with the judge before this rule on these very simulations. Now: 0.000 and 0.023. Accuracy
    is not a metric the arms' method fixes, so a tie is INCONCLUSIVE."""
    from methods import get_method

    lora = get_method("lora").exact_metrics
    assert "test_accuracy" not in lora
    exact = {"a": lora, "b": lora}
    edge, methods = simulate(
        [NON_INFERIORITY], tied_accuracies(n), -0.01, 31_000 + n, sims=TIED_SIMS, exact_metrics=exact
    )
    true, _ = simulate([NON_INFERIORITY], tied_accuracies(n), 0.0, 32_000 + n, sims=TIED_SIMS, exact_metrics=exact)
    edge_support, edge_refute = float(np.mean(edge == 1)), float(np.mean(edge == -1))
    power = float(np.mean(true == 1))
    report(f"tied accuracies, {n} seeds: boundary claim SUPPORTED", edge_support, sims=TIED_SIMS)
    report(f"tied accuracies, {n} seeds: boundary claim REFUTED", edge_refute, sims=TIED_SIMS)
    report(f"tied accuracies, {n} seeds: power (true difference 0)", power, sims=TIED_SIMS)
    assert methods == {"paired t", "none"}  # ties happen, and are never called exact
    assert edge_support <= ALPHA + TIED_TOLERANCE
    assert edge_refute <= ALPHA + TIED_TOLERANCE  # '>=' holds on its boundary
