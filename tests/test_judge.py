"""The judge: the right interval for the data's shape, verdicts that follow the interval
rule, Holm across a family, and honest answers on degenerate input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats as sps

from orchestrator.claims import parse_claim
from orchestrator.judge import Verdict, holm, judge_claims
from orchestrator.judge import stats as jstats
from orchestrator.judge.settle import settling_budget

A = [0.912, 0.905, 0.921, 0.899, 0.915]
B = [0.903, 0.900, 0.910, 0.897, 0.901]


def runs(**arms: dict[str, list[float] | dict[int, float]]) -> dict:
    """arm=dict(metric=[values on seeds 0..]) or metric={seed: value}."""
    return {
        arm: {m: (v if isinstance(v, dict) else dict(enumerate(v))) for m, v in metrics.items()}
        for arm, metrics in arms.items()
    }


def judge_one(claim: str, samples: dict, **kwargs) -> Verdict:
    (verdict,) = judge_claims([claim], samples, **kwargs)
    return verdict


# ---------------------------------------------------------------- interval choice


def test_shared_seeds_give_a_paired_t_that_matches_scipy():
    verdict = judge_one("a.acc >= b.acc - 0.01", runs(a={"acc": A}, b={"acc": B}))
    diff = np.array(A) - np.array(B)
    assert verdict.interval_method == "paired t"
    assert verdict.n == {"a": 5, "b": 5}
    assert verdict.estimate == pytest.approx(diff.mean())
    assert verdict.p_fails == pytest.approx(sps.ttest_1samp(diff, -0.01, alternative="greater").pvalue)
    assert verdict.p_holds == pytest.approx(sps.ttest_1samp(diff, -0.01, alternative="less").pvalue)
    low, high = sps.t.interval(0.90, 4, loc=diff.mean(), scale=sps.sem(diff))  # one-sided 95% bounds
    assert (verdict.ci_low, verdict.ci_high) == (pytest.approx(low), pytest.approx(high))
    assert verdict.sd == pytest.approx(diff.std(ddof=1))


def test_different_seed_sets_give_welch_that_matches_scipy():
    samples = {
        "a": {"acc": dict(zip(range(5), A, strict=True))},
        "b": {"acc": dict(zip(range(10, 14), B[:4], strict=True))},
    }
    verdict = judge_one("a.acc > b.acc", samples)
    expected = sps.ttest_ind(A, B[:4], equal_var=False, alternative="greater")
    assert verdict.interval_method == "Welch t"
    assert verdict.n == {"a": 5, "b": 4}
    assert verdict.p_fails == pytest.approx(expected.pvalue)
    assert verdict.df == pytest.approx(expected.df)
    assert verdict.estimate == pytest.approx(np.mean(A) - np.mean(B[:4]))


def test_welch_with_a_margin_matches_scipy_on_shifted_data():
    samples = {
        "a": {"acc": dict(zip(range(5), A, strict=True))},
        "b": {"acc": dict(zip(range(10, 15), B, strict=True))},
    }
    verdict = judge_one("a.acc >= b.acc - 0.01", samples)
    shifted = np.array(A) + 0.01
    expected = sps.ttest_ind(shifted, B, equal_var=False, alternative="greater")
    assert verdict.p_fails == pytest.approx(expected.pvalue)


def test_a_single_arm_uses_a_one_sample_t():
    verdict = judge_one("a.acc >= 0.9", runs(a={"acc": A}))
    assert verdict.interval_method == "one-sample t"
    assert verdict.p_fails == pytest.approx(sps.ttest_1samp(A, 0.9, alternative="greater").pvalue)


def test_metrics_of_one_arm_are_paired_by_seed():
    acc, base = np.array(A), np.array(A) - 0.05 + np.array([0, 1e-3, -1e-3, 2e-3, 0])
    verdict = judge_one("a.acc >= a.base + 0.04", runs(a={"acc": list(acc), "base": list(base)}))
    assert verdict.interval_method == "one-sample t"
    assert verdict.sd == pytest.approx(np.std(acc - base, ddof=1))
    assert verdict.verdict == "SUPPORTED"


def test_welch_keeps_metrics_within_an_arm_paired():
    acc_a = np.array(A)
    ref_a = acc_a - 0.02
    samples = {
        "a": {"acc": dict(enumerate(acc_a)), "ref": dict(enumerate(ref_a))},
        "b": {"acc": dict(zip(range(10, 15), B, strict=True))},
    }
    verdict = judge_one("a.acc - a.ref + b.acc >= 0.9", samples)
    assert verdict.interval_method == "Welch t"
    # a's part has no spread (acc - ref = 0.02 on every seed): only b's spread is left
    assert verdict.sd == pytest.approx(np.std(B, ddof=1))
    assert verdict.df == pytest.approx(4.0)


def test_different_seed_sets_without_gaps_still_use_welch():
    samples = {
        "a": {"acc": dict(zip(range(5), A, strict=True))},
        "b": {"acc": dict(zip(range(10, 15), B, strict=True))},
    }
    assert judge_one("a.acc >= b.acc - 0.01", samples).interval_method == "Welch t"


# ---------------------------------------------------------------- failed seeds count (rule 4)


def test_a_non_finite_value_makes_the_claim_inconclusive_naming_arm_and_seed():
    # Before: seed 2 of b was dropped and the other seeds SUPPORTED the claim by Welch t.
    b = list(B)
    b[2] = math.nan
    verdict = judge_one("a.acc >= b.acc - 0.01", runs(a={"acc": A}, b={"acc": b}))
    assert judge_one("a.acc >= b.acc - 0.01", runs(a={"acc": A}, b={"acc": B})).verdict == "SUPPORTED"
    assert verdict.verdict == "INCONCLUSIVE" and verdict.interval_method == "none"
    assert "arm b, seed 2: b.acc is not finite" in verdict.reason
    assert verdict.evidence["b.acc"].excluded == {2: "not finite"}
    assert verdict.p_fails is None and verdict.ci_low is None
    assert verdict.estimate == pytest.approx(np.mean(A) - np.mean(np.delete(B, 2)))  # on the rest, for reading only


def test_missing_and_non_numeric_values_are_recorded_and_named():
    samples = {"a": {"acc": {0: 0.9, 1: None, 2: "oops", 3: math.inf, 4: 0.91, 5: 0.92}, "other": {6: 1.0}}}
    verdict = judge_one("a.acc >= 0.5", samples)
    assert verdict.verdict == "INCONCLUSIVE" and verdict.n == {"a": 3}
    excluded = {1: "not finite", 2: "not finite", 3: "not finite", 6: "missing"}
    assert verdict.evidence["a.acc"].excluded == excluded
    for seed, why in excluded.items():
        assert f"arm a, seed {seed}: a.acc is {why}" in verdict.reason


def test_a_failed_seed_makes_every_claim_over_its_arm_inconclusive():
    failed = {"b": {1004: "NonFiniteLossError: non-finite loss (nan) at step 3, epoch 0"}}
    samples = {
        "a": {"acc": dict(zip(range(1000, 1005), A, strict=True))},
        "b": {"acc": dict(zip(range(1000, 1004), B[:4], strict=True))},
    }
    claims = ["a.acc >= b.acc - 0.01", "b.acc >= 0.8", "a.acc >= 0.8"]
    verdicts = judge_claims(claims, samples, failed=failed)
    assert [v.verdict for v in verdicts] == ["INCONCLUSIVE", "INCONCLUSIVE", "SUPPORTED"]
    for verdict in verdicts[:2]:
        assert (
            "arm b, seed 1004: its run failed (NonFiniteLossError: non-finite loss (nan) at step 3, epoch 0)"
            in verdict.reason
        )
        assert "not on the seeds that happened to survive" in verdict.reason
        assert verdict.evidence["b.acc"].excluded == {1004: "run failed: " + failed["b"][1004]}
    assert verdicts[0].n == {"a": 5, "b": 4}
    # the survivors alone would have supported both
    assert [v.verdict for v in judge_claims(claims, samples)] == ["SUPPORTED"] * 3


def test_a_claim_with_a_failed_seed_stays_in_holms_family_with_p_one():
    claims, samples = threshold_claims([0.03])
    samples["b"] = {"x": {0: 1.0, 1: 1.1, 2: 1.2}}
    verdicts = judge_claims(claims + ["b.x >= 0"], samples, failed={"b": {3: "RuntimeError: boom"}})
    assert [v.verdict for v in verdicts] == ["INCONCLUSIVE", "INCONCLUSIVE"]  # 0.03 > 0.05 / 2
    assert verdicts[0].p_fails_adjusted == pytest.approx(0.06) and verdicts[1].p_fails is None
    assert "Holm's step-down stopped" not in verdicts[0].reason and "arm b, seed 3" in verdicts[1].reason


def test_an_arm_whose_seeds_all_failed_names_the_failures_not_missing_runs():
    failed = {"b": {1: "RuntimeError: injected failure at step 0", 2: "MemoryLimitError: over 512 MB"}}
    verdict = judge_one("a.acc >= b.acc", runs(a={"acc": A[:3]}), failed=failed)
    assert verdict.verdict == "INCONCLUSIVE"
    assert "arm b, seed 1: its run failed (RuntimeError: injected failure at step 0)" in verdict.reason
    assert "arm b, seed 2: its run failed (MemoryLimitError: over 512 MB)" in verdict.reason
    assert "no confirmation runs for arm b" not in verdict.reason


def test_a_failed_seeds_error_is_shortened_to_its_first_line():
    trace = "Traceback (most recent call last):\n" + "  File x\n" * 50
    long_error = "ValueError: " + "x" * 500
    verdict = judge_one("a.acc >= 0.5", runs(a={"acc": A}), failed={"a": {9: trace, 10: long_error, 11: ""}})
    assert "its run failed (Traceback (most recent call last):)" in verdict.reason
    assert len(jstats.short_error(long_error)) == jstats.ERROR_CHARS and jstats.short_error(long_error).endswith("...")
    assert "arm a, seed 11: its run failed (no error recorded)" in verdict.reason


def test_a_failed_seeds_values_are_not_used_even_if_reported():
    samples = runs(a={"acc": A})
    verdict = judge_one("a.acc >= 0.5", samples, failed={"a": {0: "RuntimeError: late failure"}})
    assert verdict.verdict == "INCONCLUSIVE" and 0 not in verdict.evidence["a.acc"].values


# ---------------------------------------------------------------- degenerate input


def test_no_runs_for_an_arm_is_inconclusive_with_the_arm_named():
    for samples in (
        {"a": {"acc": {0: 0.9, 1: 0.91}}},
        {"a": {"acc": {0: 0.9, 1: 0.91}}, "b": {}},
        {"a": {"acc": {0: 0.9, 1: 0.91}}, "b": {"acc": {}}},
    ):
        verdict = judge_one("a.acc >= b.acc", samples)
        assert verdict.verdict == "INCONCLUSIVE"
        assert "no confirmation runs for arm b" in verdict.reason
        assert verdict.ci_low is None and verdict.p_fails is None


def test_empty_samples_never_crash():
    verdicts = judge_claims(["a.acc >= b.acc", "a.acc in [0, 1]"], {})
    assert [v.verdict for v in verdicts] == ["INCONCLUSIVE", "INCONCLUSIVE"]
    assert judge_claims([], {}) == []
    assert judge_one("a.acc >= 0", None).verdict == "INCONCLUSIVE"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "samples",
    [
        {"a": "not a mapping"},
        {"a": {"x": [0.5, 0.6]}},  # a list instead of seed -> value
        {"a": {"x": {1: 1e308, 2: -1e308, 3: 1e308}}},  # overflows a float spread
        {"a": {"x": {"s1": 0.5, 2: 0.6, (3, 4): 0.7}}},  # odd seed keys
    ],
)
def test_malformed_samples_give_verdicts_not_exceptions(samples):
    verdicts = judge_claims(["a.x >= 0.1", "a.x within 0.1 of b.x"], samples)
    assert verdicts[1].verdict == "INCONCLUSIVE"
    for verdict in verdicts:
        assert Verdict.model_validate_json(verdict.model_dump_json()).verdict == verdict.verdict


def test_unknown_metric_lists_what_the_arm_reports():
    verdict = judge_one("a.accuracy >= 0.5", runs(a={"acc": A, "loss": B}))
    assert verdict.verdict == "INCONCLUSIVE"
    assert "arm a reports no metric 'accuracy' (it reports: acc, loss)" in verdict.reason


def test_all_nan_metric_is_inconclusive():
    verdict = judge_one("a.acc >= 0.5", runs(a={"acc": [math.nan, math.nan]}))
    assert verdict.verdict == "INCONCLUSIVE" and "no finite values of a.acc" in verdict.reason


def test_disjoint_seeds_of_two_metrics_in_one_arm_leave_nothing_usable():
    verdict = judge_one("a.x >= a.y", {"a": {"x": {0: 1.0, 1: 1.1}, "y": {2: 0.5, 3: 0.6}}})
    assert verdict.verdict == "INCONCLUSIVE" and verdict.n == {"a": 0}
    assert "arm a, seed 0: a.y is missing" in verdict.reason and "arm a, seed 3: a.x is missing" in verdict.reason


def test_a_single_seed_is_inconclusive_but_still_reports_the_estimate():
    verdict = judge_one("a.acc >= b.acc", runs(a={"acc": [0.95]}, b={"acc": [0.5]}))
    assert verdict.verdict == "INCONCLUSIVE"
    assert "only 1 seed" in verdict.reason and "unknown" in verdict.reason
    assert verdict.estimate == pytest.approx(0.45)
    assert verdict.ci_low is None and verdict.seeds_to_settle is None


def test_a_single_seed_in_one_arm_of_a_welch_comparison_is_inconclusive():
    samples = {"a": {"acc": {0: 0.9, 1: 0.92}}, "b": {"acc": {7: 0.8}}}
    verdict = judge_one("a.acc >= b.acc", samples)
    assert verdict.verdict == "INCONCLUSIVE" and "arm b has only 1 confirmation run" in verdict.reason


FIXED = {"a": {"flops_ratio", "trainable_params", "x", "y"}, "b": {"trainable_params"}}


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        ("a.flops_ratio <= 0.25", "SUPPORTED"),
        ("a.flops_ratio < 0.25", "REFUTED"),  # exactly on a strict boundary
        ("a.flops_ratio <= 0.2", "REFUTED"),
        ("a.flops_ratio in [0.25, 0.3]", "SUPPORTED"),
        ("a.flops_ratio within 0 of 0.25", "SUPPORTED"),
        ("a.flops_ratio > 0.25", "REFUTED"),
    ],
)
def test_zero_variance_of_a_fixed_metric_is_an_exact_comparison(claim, expected):
    verdict = judge_one(claim, runs(a={"flops_ratio": [0.25, 0.25, 0.25]}), exact_metrics=FIXED)
    assert verdict.interval_method == "exact (no variance)"
    assert verdict.verdict == expected
    assert verdict.ci_low == verdict.ci_high == pytest.approx(0.25)
    assert "no variance across seeds" in verdict.reason
    assert verdict.seeds_to_settle is None and verdict.effect_d is None


def test_exact_comparison_ignores_floating_point_noise():
    verdict = judge_one("a.x <= 0.3", runs(a={"x": [0.1 + 0.2] * 3}), exact_metrics=FIXED)
    assert verdict.verdict == "SUPPORTED"
    verdict = judge_one("a.x - a.y >= 0.2", runs(a={"x": [0.3, 0.7, 0.5], "y": [0.1, 0.5, 0.3]}), exact_metrics=FIXED)
    assert verdict.interval_method == "exact (no variance)" and verdict.verdict == "SUPPORTED"


def test_fixed_counts_of_two_arms_compare_exactly_on_shared_or_different_seeds():
    claim = "a.trainable_params <= b.trainable_params / 3"
    shared = runs(a={"trainable_params": [4096] * 2}, b={"trainable_params": [16384] * 2})
    apart = {"a": {"trainable_params": {0: 4096, 1: 4096}}, "b": {"trainable_params": {5: 16384, 6: 16384}}}
    for samples in (shared, apart):
        verdict = judge_one(claim, samples, exact_metrics=FIXED)
        assert verdict.verdict == "SUPPORTED" and verdict.interval_method == "exact (no variance)"


# ---------------------------------------------------------------- exact only where it is true (rule 3)


def test_one_value_on_every_seed_of_an_accuracy_is_inconclusive_not_exact():
    # `orchestrate run hypotheses/lora_rank.yaml --profile smoke`: both arms predicted one class,
    # test accuracy 0.4688 on every seed. Before: SUPPORTED "exact (no variance)".
    samples = runs(lora_r4={"test_accuracy": [0.4688] * 3}, lora_r16={"test_accuracy": [0.4688] * 3})
    exact = {"lora_r4": {"trainable_params", "flops_ratio"}, "lora_r16": {"trainable_params", "flops_ratio"}}
    verdict = judge_one("lora_r4.test_accuracy >= lora_r16.test_accuracy - 0.01", samples, exact_metrics=exact)
    assert verdict.verdict == "INCONCLUSIVE" and verdict.interval_method == "none"
    assert verdict.estimate == 0.0 and verdict.p_fails is None and verdict.ci_low is None
    assert verdict.reason == (
        "No interval: every seed gave the same value of lora_r4.test_accuracy - lora_r16.test_accuracy (0), but "
        "lora_r4.test_accuracy and lora_r16.test_accuracy vary with the seed (the method does not fix them); the "
        "spread cannot be estimated from 3 seeds per arm."
    )


def test_one_value_on_every_seed_of_one_varying_metric_is_named_alone():
    verdict = judge_one("a.test_accuracy >= 0.4", runs(a={"test_accuracy": [0.4688] * 2}))
    assert verdict.verdict == "INCONCLUSIVE"
    assert (
        "every seed gave the same value of a.test_accuracy (0.4688), which varies with the seed (its method "
        "does not fix it); its spread cannot be estimated from 2 seeds"
    ) in verdict.reason


def test_without_exact_metrics_no_metric_is_compared_exactly():
    verdict = judge_one("a.flops_ratio <= 0.3", runs(a={"flops_ratio": [0.25] * 3}))
    assert verdict.verdict == "INCONCLUSIVE" and "a.flops_ratio" in verdict.reason


def test_a_metric_fixed_in_one_arm_is_not_fixed_in_another():
    samples = {"a": {"trainable_params": {0: 10.0, 1: 10.0}}, "b": {"trainable_params": {5: 50.0, 6: 50.0}}}
    verdict = judge_one("a.trainable_params <= b.trainable_params", samples, exact_metrics={"a": {"trainable_params"}})
    assert verdict.verdict == "INCONCLUSIVE"
    assert "but b.trainable_params varies with the seed" in verdict.reason  # Welch, zero spread


def test_a_varying_metric_with_a_spread_still_gets_its_t_test():
    samples = runs(a={"acc": A, "trainable_params": [100] * 5}, b={"acc": B})
    verdict = judge_one("a.acc - b.acc + a.trainable_params >= 99.99", samples, exact_metrics=FIXED)
    assert verdict.interval_method == "paired t" and verdict.verdict == "SUPPORTED"


def test_exact_metrics_of_the_methods_are_metrics_they_report():
    from methods import available_methods, get_method
    from orchestrator.metrics import COMMON_METRICS, STATIC_ADAPTER_METRICS, flop_metrics

    engine = set(COMMON_METRICS) | set(flop_metrics("image"))  # FLOPs per token (text, causal LM) or per image
    assert engine >= STATIC_ADAPTER_METRICS
    for name in available_methods():
        method = get_method(name)
        assert method.exact_metrics <= engine | set(method.metrics), name


@pytest.mark.parametrize(
    "name", ["radlora", "cogalora", "galora", "plateau_lora", "adalora", "qlora_adalora", "sora", "adamss"]
)
def test_methods_whose_cost_follows_training_or_the_input_do_not_fix_their_flops(name):
    from methods import get_method

    exact = get_method(name).exact_metrics
    assert not exact & {
        "adapter_flops_per_token",
        "adapter_flops_per_image",
        "flops_ratio",
        "active_layers",
        "total_rank",
        "kept_modules",
        "active_fraction",
        "kept_fraction",
        "rank_final",
    }
    assert "head_params" in exact


def test_static_adapters_fix_their_counts_and_flops():
    from methods import get_method

    for name in ("lora", "dora", "pissa", "lora_ga", "full", "dylora", "snell", "failing"):
        assert {"trainable_params", "flops_ratio", "adapter_flops_per_token"} <= get_method(name).exact_metrics, name
    assert {"active_layers", "total_rank"} <= get_method("lora").exact_metrics
    assert "trainable_params" not in get_method("plateau_lora").exact_metrics  # it grows
    assert "trainable_params" not in get_method("adamss").exact_metrics  # seeded K-means


# ---------------------------------------------------------------- verdicts = interval rule


def inside(verdict: Verdict) -> bool:
    low_ok = verdict.lower is None or verdict.ci_low >= verdict.lower
    high_ok = verdict.upper is None or verdict.ci_high <= verdict.upper
    return low_ok and high_ok


def outside(verdict: Verdict) -> bool:
    return (verdict.lower is not None and verdict.ci_high <= verdict.lower) or (
        verdict.upper is not None and verdict.ci_low >= verdict.upper
    )


@pytest.mark.parametrize("family_wise", [None, True, False])
@pytest.mark.parametrize(
    "claim", ["a.acc >= b.acc - 0.01", "a.acc < b.acc", "a.acc within 0.01 of b.acc", "a.acc - b.acc in [0, 0.02]"]
)
def test_single_claim_verdict_is_the_interval_rule(claim, family_wise):
    rng = np.random.default_rng(7)
    seen = set()
    for _ in range(200):
        a = 0.9 + rng.normal(0, 0.01, 4)
        b = a - rng.normal(rng.uniform(-0.02, 0.03), 0.006, 4)
        verdict = judge_one(claim, runs(a={"acc": list(a)}, b={"acc": list(b)}), family_wise=family_wise)
        assert verdict.confidence == pytest.approx(0.95)
        expected = "SUPPORTED" if inside(verdict) else "REFUTED" if outside(verdict) else "INCONCLUSIVE"
        assert verdict.verdict == expected
        seen.add(verdict.verdict)
    assert seen == {"SUPPORTED", "REFUTED", "INCONCLUSIVE"}


def test_confidence_changes_the_interval_width():
    samples = runs(a={"acc": A}, b={"acc": B})
    wide = judge_one("a.acc >= b.acc", samples, confidence=0.99)
    narrow = judge_one("a.acc >= b.acc", samples, confidence=0.9)
    assert wide.ci_low < narrow.ci_low and wide.ci_high > narrow.ci_high


@pytest.mark.parametrize("confidence", [0.5, 1.0, 0.3, 1.2])
def test_confidence_outside_half_to_one_is_rejected(confidence):
    with pytest.raises(ValueError):
        judge_claims(["a.x > 0"], {}, confidence=confidence)


# ---------------------------------------------------------------- Holm


def test_holm_matches_a_hand_computed_example():
    # sorted: 0.01 <= 0.05/3 reject; 0.03 > 0.05/2 stop, so 0.04 is not rejected either
    result = holm([0.01, 0.04, 0.03], 0.05)
    assert result.rejected == [True, False, False]
    assert result.levels == pytest.approx([0.05 / 3, 0.05, 0.05 / 2])
    assert result.adjusted == pytest.approx([0.03, 0.06, 0.06])


def test_holm_rejects_more_than_bonferroni():
    # Bonferroni (all at 0.05/3 = 0.0167) rejects two; Holm's 0.02 <= 0.05/1 rejects the third
    result = holm([0.01, 0.015, 0.02], 0.05)
    assert result.rejected == [True, True, True]
    assert result.adjusted == pytest.approx([0.03, 0.03, 0.03])
    assert holm([0.001, 0.02, 0.04, 0.3], 0.05).rejected == [True, False, False, False]


def threshold_claims(p_values: list[float]) -> tuple[list[str], dict]:
    """Claims 'a.x >= c' on 3 seeds whose one-sided p-value of 'fails' is exactly p."""
    mean, sd = 0.9, 0.01
    se = sd / math.sqrt(3)
    claims = [f"a.x >= {float(mean - sps.t.ppf(1 - p, 2) * se)!r}" for p in p_values]
    return claims, runs(a={"x": [mean - sd, mean, mean + sd]})


def test_holm_in_the_judge_matches_the_hand_computed_family():
    claims, samples = threshold_claims([0.01, 0.04, 0.03])
    verdicts = judge_claims(claims, samples)
    assert [v.p_fails for v in verdicts] == pytest.approx([0.01, 0.04, 0.03])
    assert [v.verdict for v in verdicts] == ["SUPPORTED", "INCONCLUSIVE", "INCONCLUSIVE"]
    assert [v.p_fails_adjusted for v in verdicts] == pytest.approx([0.03, 0.06, 0.06])
    assert verdicts[0].confidence == pytest.approx(1 - 0.05 / 3)
    assert all(v.holm and v.family_size == 3 for v in verdicts)
    # 0.03 clears 0.05 / 2 = 0.025? No: its own test fails. 0.04 <= 0.05 would pass on its own,
    # but the step-down has stopped: the reason says so.
    assert "Holm's step-down stopped" in verdicts[1].reason
    assert "partly at or above" in verdicts[2].reason and "so neither is shown" in verdicts[2].reason


def test_without_holm_each_claim_is_judged_at_the_full_level():
    claims, samples = threshold_claims([0.01, 0.04, 0.03])
    verdicts = judge_claims(claims, samples, family_wise=False)
    assert [v.verdict for v in verdicts] == ["SUPPORTED"] * 3
    assert all(v.confidence == pytest.approx(0.95) and not v.holm for v in verdicts)


def test_holm_runs_separately_for_support_and_refutation():
    claims, samples = threshold_claims([0.01, 0.99])  # second: p_holds = 0.01 <= 0.05 / 2
    verdicts = judge_claims(claims, samples)
    assert [v.verdict for v in verdicts] == ["SUPPORTED", "REFUTED"]
    assert verdicts[1].p_holds == pytest.approx(0.01)
    assert verdicts[1].confidence == pytest.approx(1 - 0.05 / 2)  # first of two in its family


def test_unavailable_claims_stay_in_the_family():
    claims, samples = threshold_claims([0.03])
    assert judge_claims(claims, samples)[0].verdict == "SUPPORTED"  # alone: 0.03 <= 0.05
    verdicts = judge_claims(claims + ["b.x > 0"], samples)
    assert [v.verdict for v in verdicts] == ["INCONCLUSIVE", "INCONCLUSIVE"]  # 0.03 > 0.05 / 2
    assert verdicts[0].confidence == pytest.approx(0.975)


# ---------------------------------------------------------------- the verdict record


def test_verdict_carries_effect_sizes_evidence_and_a_row():
    verdict = judge_one("a.acc >= b.acc - 0.01", runs(a={"acc": A}, b={"acc": B}))
    diff = np.array(A) - np.array(B)
    assert verdict.verdict == "SUPPORTED"
    assert verdict.quantity == "a.acc - b.acc"
    assert verdict.boundary == pytest.approx(-0.01)
    assert verdict.effect_size == pytest.approx(diff.mean() + 0.01)
    assert verdict.effect_d == pytest.approx((diff.mean() + 0.01) / diff.std(ddof=1))
    assert verdict.evidence["a.acc"].mean == pytest.approx(np.mean(A))
    assert verdict.evidence["b.acc"].sd == pytest.approx(np.std(B, ddof=1))
    assert verdict.evidence["a.acc"].values == dict(enumerate(A))
    assert verdict.seeds_to_settle is None
    row = verdict.to_row()
    assert row["verdict"] == "SUPPORTED" and row["method"] == "paired t" and row["n"] == "a=5, b=5"
    assert row["confidence"] == "95%"
    assert verdict.reason.startswith("a.acc - b.acc is 0.0082 with one-sided 95% bounds [0.003658, 0.01274]")
    assert "entirely at or above -0.01 as claimed (paired t, 5 seeds per arm)." in verdict.reason
    assert Verdict.model_validate_json(verdict.model_dump_json()) == verdict
    with pytest.raises(ValidationError, match="frozen"):
        verdict.verdict = "REFUTED"  # type: ignore[misc]


def test_refuted_reason_and_bounds_for_a_band():
    verdict = judge_one("a.acc in [0.95, 1.0]", runs(a={"acc": A}))
    assert verdict.verdict == "REFUTED"
    assert verdict.ci_high < 0.95
    assert "entirely outside [0.95, 1], against the claim (one-sample t, 5 seeds)." in verdict.reason
    assert verdict.boundary == 0.95 and verdict.effect_size < 0


def test_inconclusive_suggests_how_many_seeds_would_settle_it():
    verdict = judge_one("a.acc >= b.acc + 0.005", runs(a={"acc": A[:3]}, b={"acc": B[:3]}))
    assert verdict.verdict == "INCONCLUSIVE"
    assert verdict.seeds_to_settle is not None and verdict.seeds_to_settle > 3
    assert f"about {verdict.seeds_to_settle} seeds per arm" in verdict.reason


def _seeds_only(sd: float, n: int) -> jstats.Estimate:
    """A paired estimate over n seeds with per-seed spread sd, no per-example data."""
    return jstats.Estimate(0.0, sd / math.sqrt(n), n - 1.0, sd, jstats.PAIRED, {"a": n, "b": n})


def test_seeds_to_settle_matches_the_noncentral_t_power():
    # d = 1, one-sided 5%, 80% power: the exact one-sample t answer is 8 seeds
    n = settling_budget(1.0, _seeds_only(1.0, 3), 0.05).seeds
    assert n == 8
    power = lambda k: sps.nct.sf(sps.t.ppf(0.95, k - 1), k - 1, math.sqrt(k))  # noqa: E731
    assert power(n) >= 0.8 > power(n - 1)
    assert settling_budget(0.0, _seeds_only(1.0, 3), 0.05).seeds is None
    assert settling_budget(1.0, _seeds_only(0.0, 3), 0.05).seeds is None
    assert settling_budget(10.0, _seeds_only(1.0, 3), 0.05).seeds == 4  # never fewer than one more seed


def test_when_the_test_set_is_too_small_the_budget_asks_for_examples_not_seeds():
    """Seeds barely vary, the test examples' se is 0.01 and the estimate sits 0.005 from
    its boundary: no number of seeds can clear it; about 33x the examples would."""
    est = jstats.Estimate(
        0.0,
        math.sqrt(1e-6 + 1e-4),
        500.0,
        0.00173,
        jstats.PAIRED + jstats.WITH_EXAMPLES,
        {"a": 3, "b": 3},
        seed_variance=1e-6,
        example_variance=1e-4,
        examples=1000,
        example_sd=math.sqrt(0.1),
    )
    budget = settling_budget(0.005, est, 0.05)
    assert budget.seeds is None
    # sigma_e^2 / (delta^2 / (z_0.95 + z_0.8)^2 - seed part) = 0.1 / (0.005^2 / 6.18 - 1e-6) ~ 32,900
    assert budget.examples is not None and 31_000 < budget.examples < 35_000
    assert budget.examples_at_seeds == 3
    assert "more seeds alone cannot settle it" in budget.text


def test_claims_may_be_given_as_text_or_parsed():
    samples = runs(a={"acc": A})
    assert judge_one("a.acc >= 0.8", samples) == judge_claims([parse_claim("a.acc >= 0.8")], samples)[0]
