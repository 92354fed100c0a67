"""Calibration with per-example outcomes: seeds x shared test examples, ties, failures, looks.

Each simulated hypothesis draws a fresh test set of N examples from a population and
trains every arm on S seeds; an arm's outcome on an example is a Bernoulli draw whose
log-odds add the arm's skill, a seed effect (shared by the arms on one seed, as the
data order is, plus the arm's own), the example's difficulty (shared by the arms: the
same examples are hard for both) and an arm-by-example part (where the arms disagree).
So accuracies are discrete (steps of 1/N), often tie across seeds, and two sources of
variance are present, as in real confirmation runs (``orchestrator.judge.examples``).

The truth each claim is judged against is the population value: the expectation over
seeds and over test sets, computed once per scenario from 2,000,000 draws
(400 test sets of 1,000 examples, 5 seeds each). Claims sit on
their boundary (the hardest case for the SUPPORTED and REFUTED guarantees), so:

- false SUPPORTED and false REFUTED each happen at most alpha of the time, within three
  Monte-Carlo standard errors (SIMS = 4,000 simulated hypotheses per scenario);
- power: a claim that holds by 3 accuracy points is SUPPORTED at least POWER_FLOOR of the
  time in the scenarios whose design can show it (printed for all with ``pytest -s``).

Sequential looks (``orchestrator.judge.sequential``) run up to the cap with claims
stopping as soon as they settle; a failed seed makes its claim INCONCLUSIVE and is never
replaced by a later one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from orchestrator.judge import judge_claims
from orchestrator.judge.sequential import arms_needing_seeds, judge_look, look_sizes

SIMS = 4000
CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
TOLERANCE = 3 * math.sqrt(ALPHA * (1 - ALPHA) / SIMS)
FIRST_SEED = 1000


@dataclass(frozen=True)
class World:
    """A population of test examples and seeds for arms a and b (log-odds scale)."""

    skill_a: float = 1.2
    skill_b: float = 1.2
    difficulty_sd: float = 1.8  # examples hard for both arms
    disagreement_sd: float = 0.8  # examples one arm gets and the other does not
    seed_shared_sd: float = 0.10  # data order: moves both arms on a seed
    seed_own_sd: float = 0.15  # each arm's own initialisation

    def draw(
        self, rng: np.random.Generator, seeds: int, examples: int, shape: tuple[int, ...] = ()
    ) -> dict[str, np.ndarray]:
        """Correctness ``arm -> (*shape, seeds, examples)`` of 0/1 outcomes."""
        difficulty = rng.normal(0.0, self.difficulty_sd, (*shape, 1, examples))
        shared = rng.normal(0.0, self.seed_shared_sd, (*shape, seeds, 1))
        out = {}
        for arm, skill in (("a", self.skill_a), ("b", self.skill_b)):
            logit = (
                skill
                + difficulty
                + shared
                + rng.normal(0.0, self.seed_own_sd, (*shape, seeds, 1))
                + rng.normal(0.0, self.disagreement_sd, (*shape, 1, examples))
            )
            out[arm] = (rng.random((*shape, seeds, examples)) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float64)
        return out

    def true_accuracies(self) -> tuple[float, float]:
        rng = np.random.default_rng(12345)
        # 400 independent worlds of 5 seeds x 1000 examples: the expectation over both
        # (one big test set would fix its difficulties: the truth for that set only)
        draws = self.draw(rng, 5, 1000, (400,))
        return float(draws["a"].mean()), float(draws["b"].mean())


def _inputs(outcomes: dict[str, np.ndarray], seeds: int, failed: dict[str, dict[int, str]] | None = None):
    """The judge's samples and per-example data for the first ``seeds`` seeds."""
    samples, per_example = {}, {}
    for arm, table in outcomes.items():
        kept = {FIRST_SEED + s: table[s] for s in range(seeds) if FIRST_SEED + s not in (failed or {}).get(arm, {})}
        samples[arm] = {"test_accuracy": {seed: float(row.mean()) for seed, row in kept.items()}}
        per_example[arm] = {"test_accuracy": kept}
    return samples, per_example


def _rates(verdicts: list[str]) -> tuple[float, float]:
    return verdicts.count("SUPPORTED") / len(verdicts), verdicts.count("REFUTED") / len(verdicts)


def _report(name: str, supported: float, refuted: float, power: float | None = None) -> None:
    extra = "" if power is None else f"  power {power:.3f}"
    print(
        f"\n{name}: false SUPPORTED {supported:.4f}  false REFUTED {refuted:.4f}  "
        f"(bound {ALPHA + TOLERANCE:.4f}){extra}"
    )


def _judge_fixed(world: World, seeds: int, examples: int, claim_of, rng_seed: int) -> list[str]:
    rng = np.random.default_rng(rng_seed)
    out = []
    for _ in range(SIMS):
        samples, per_example = _inputs(world.draw(rng, seeds, examples), seeds)
        out.append(judge_claims([claim_of()], samples, confidence=CONFIDENCE, per_example=per_example)[0].verdict)
    return out


@pytest.mark.parametrize("seeds,examples", [(2, 300), (3, 300), (2, 1000), (5, 200)])
def test_two_arms_on_shared_examples_non_inferiority_on_its_margin_errors_at_most_alpha(seeds, examples):
    world = World(skill_a=1.05, skill_b=1.2)
    acc_a, acc_b = world.true_accuracies()
    margin = acc_a - acc_b  # the claim a >= b + margin is exactly on its boundary
    verdicts = _judge_fixed(
        world, seeds, examples, lambda: f"a.test_accuracy >= b.test_accuracy + {margin!r}", seeds * 7 + examples
    )
    supported, refuted = _rates(verdicts)
    _report(f"boundary non-inferiority, {seeds} seeds x {examples} examples", supported, refuted)
    assert supported <= ALPHA + TOLERANCE
    assert refuted <= ALPHA + TOLERANCE


@pytest.mark.parametrize("seeds,examples", [(2, 300), (3, 1000)])
def test_single_arm_absolute_threshold_on_its_boundary_errors_at_most_alpha(seeds, examples):
    world = World()
    acc_a, _ = world.true_accuracies()
    verdicts = _judge_fixed(world, seeds, examples, lambda: f"a.test_accuracy >= {acc_a!r}", 11 * seeds + examples)
    supported, refuted = _rates(verdicts)
    _report(f"boundary threshold, one arm, {seeds} seeds x {examples} examples", supported, refuted)
    assert supported <= ALPHA + TOLERANCE
    assert refuted <= ALPHA + TOLERANCE


def test_ties_from_almost_no_seed_variance_are_not_exact_and_errors_stay_at_most_alpha():
    """Seeds barely matter: 2 seeds often give the same accuracy difference. The test
    examples' variance, and the seed x example floor, still give an honest interval."""
    world = World(skill_a=1.2, skill_b=1.2, seed_shared_sd=0.0, seed_own_sd=0.01, disagreement_sd=0.3)
    acc_a, acc_b = world.true_accuracies()
    rng = np.random.default_rng(7)
    verdicts, ties = [], 0
    for _ in range(SIMS):
        samples, per_example = _inputs(world.draw(rng, 2, 100), 2)
        diffs = {round(samples["a"]["test_accuracy"][s] - samples["b"]["test_accuracy"][s], 9) for s in (1000, 1001)}
        ties += len(diffs) == 1
        claim = f"a.test_accuracy >= b.test_accuracy + {acc_a - acc_b!r}"
        verdicts.append(judge_claims([claim], samples, confidence=CONFIDENCE, per_example=per_example)[0].verdict)
    supported, refuted = _rates(verdicts)
    _report(f"ties ({ties / SIMS:.0%} of pairs tie), 2 seeds x 100 examples", supported, refuted)
    assert ties / SIMS > 0.05  # the scenario does produce ties
    assert supported <= ALPHA + TOLERANCE
    assert refuted <= ALPHA + TOLERANCE


def test_power_five_points_better_on_1000_examples_and_5_seeds_is_supported_usually():
    """a is 5.2 points better than b; per-seed accuracies vary by ~2.5 points (as the
    shipped default profiles' do). The normal-approximation power of this design is
    ~0.9; a judge that double-counted variance would fall well below 0.8."""
    world = World(skill_a=1.6, skill_b=1.2)
    acc_a, acc_b = world.true_accuracies()
    rng = np.random.default_rng(3)
    verdicts = []
    for _ in range(SIMS // 4):
        samples, per_example = _inputs(world.draw(rng, 5, 1000), 5)
        verdicts.append(
            judge_claims(
                ["a.test_accuracy > b.test_accuracy"], samples, confidence=CONFIDENCE, per_example=per_example
            )[0].verdict
        )
    power = verdicts.count("SUPPORTED") / len(verdicts)
    print(f"\npower: a better by {acc_a - acc_b:.3f}, 5 seeds x 1000 examples: {power:.3f}")
    assert power >= 0.8


def _sequential(
    world: World,
    claims: list[str],
    seeds: int,
    max_seeds: int,
    examples: int,
    rng_seed: int,
    fail_probability: float = 0.0,
) -> tuple[list[list[str]], list[int]]:
    """Each simulated hypothesis run through its looks as the driver runs them: arms of
    open claims get the next round; returns every simulation's final verdicts and the
    seeds per arm it used (the largest)."""
    rng = np.random.default_rng(rng_seed)
    sizes = look_sizes(seeds, max_seeds)
    finals, used = [], []
    for _ in range(SIMS):
        outcomes = world.draw(rng, max_seeds, examples)
        failed = {
            arm: {
                FIRST_SEED + s: "NonFiniteLossError: nan" for s in range(max_seeds) if rng.random() < fail_probability
            }
            for arm in outcomes
        }
        ran = {arm: sizes[0] for arm in outcomes}
        verdicts = None
        for look in range(1, len(sizes) + 1):
            samples, per_example = {}, {}
            for arm in outcomes:
                arm_samples, arm_examples = _inputs({arm: outcomes[arm]}, ran[arm], failed)
                samples |= arm_samples
                per_example |= arm_examples
            seen_failed = {arm: {s: e for s, e in f.items() if s < FIRST_SEED + ran[arm]} for arm, f in failed.items()}
            verdicts = judge_look(
                claims,
                samples,
                look=look,
                sizes=sizes,
                previous=verdicts,
                confidence=CONFIDENCE,
                failed=seen_failed,
                per_example=per_example,
            )
            going_on = arms_needing_seeds(claims, verdicts)
            if look == len(sizes) or not going_on:
                break
            for arm in going_on:
                ran[arm] = sizes[look]
        finals.append([v.verdict for v in verdicts])
        used.append(max(ran.values()))
    return finals, used


def test_sequential_looks_2_to_8_seeds_boundary_claim_errors_at_most_alpha_over_all_looks():
    world = World(skill_a=1.05, skill_b=1.2)
    acc_a, acc_b = world.true_accuracies()
    claim = f"a.test_accuracy >= b.test_accuracy + {acc_a - acc_b!r}"
    finals, used = _sequential(world, [claim], 2, 8, 300, 21)
    supported, refuted = _rates([f[0] for f in finals])
    _report(f"sequential 2..8 seeds (mean {np.mean(used):.1f}), boundary claim", supported, refuted)
    assert supported <= ALPHA + TOLERANCE
    assert refuted <= ALPHA + TOLERANCE


def test_sequential_looks_stop_early_when_the_answer_is_clear_and_keep_power():
    """a beats b by ~14 points: most hypotheses settle at the first look."""
    world = World(skill_a=2.0, skill_b=1.2)
    finals, used = _sequential(world, ["a.test_accuracy >= b.test_accuracy + 0.02"], 3, 9, 1000, 22)
    power = [f[0] for f in finals].count("SUPPORTED") / len(finals)
    print(f"\nsequential 3..9, true gap ~14 points: power {power:.3f}, mean seeds {np.mean(used):.2f}")
    assert power >= 0.9
    assert np.mean(used) < 4.5


def test_sequential_family_of_three_claims_on_their_boundaries_any_false_support_at_most_alpha():
    world = World(skill_a=1.05, skill_b=1.2)
    acc_a, acc_b = world.true_accuracies()
    claims = [
        f"a.test_accuracy >= b.test_accuracy + {acc_a - acc_b!r}",
        f"a.test_accuracy >= {acc_a!r}",
        f"b.test_accuracy <= {acc_b!r}",
    ]
    finals, used = _sequential(world, claims, 2, 6, 300, 23)
    any_supported = sum("SUPPORTED" in f for f in finals) / len(finals)
    any_refuted = sum("REFUTED" in f for f in finals) / len(finals)
    _report(f"sequential family of 3, 2..6 seeds (mean {np.mean(used):.1f}), any claim", any_supported, any_refuted)
    assert any_supported <= ALPHA + TOLERANCE
    assert any_refuted <= ALPHA + TOLERANCE


def test_sequential_with_failed_seeds_boundary_claim_errors_at_most_alpha_and_failures_never_dropped():
    world = World(skill_a=1.05, skill_b=1.2)
    acc_a, acc_b = world.true_accuracies()
    claim = f"a.test_accuracy >= b.test_accuracy + {acc_a - acc_b!r}"
    finals, _ = _sequential(world, [claim], 2, 6, 300, 24, fail_probability=0.05)
    supported, refuted = _rates([f[0] for f in finals])
    _report("sequential 2..6 seeds, 5% of seeds fail", supported, refuted)
    assert supported <= ALPHA + TOLERANCE
    assert refuted <= ALPHA + TOLERANCE
