"""The claim language: every form parses to the right normal form; every mistake is a
ClaimSyntaxError that points at the right column and says what to write instead."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from orchestrator.claims import Claim, ClaimSyntaxError, LinearExpr, MetricRef, parse_claim

A, B = MetricRef("a", "x"), MetricRef("b", "y")
RAD, LORA = MetricRef("radlora", "test_accuracy"), MetricRef("lora", "test_accuracy")


def coefficients(claim: Claim) -> dict[MetricRef, float]:
    return dict(claim.expr.coefficients)


# ---------------------------------------------------------------- the three forms


@pytest.mark.parametrize(
    ("text", "lower", "upper", "lower_strict", "upper_strict"),
    [
        ("a.x >= 0.9", 0.0, None, False, False),
        ("a.x > 0.9", 0.0, None, True, False),
        ("a.x <= 0.9", None, 0.0, False, False),
        ("a.x < 0.9", None, 0.0, False, True),
    ],
)
def test_each_comparison_operator_becomes_a_bound_on_lhs_minus_rhs(text, lower, upper, lower_strict, upper_strict):
    claim = parse_claim(text)
    assert claim.kind == "compare"
    assert (claim.lower, claim.upper) == (lower, upper)
    assert (claim.lower_strict, claim.upper_strict) == (lower_strict, upper_strict)
    assert coefficients(claim) == {A: 1.0}
    assert claim.expr.constant == pytest.approx(-0.9)


def test_non_inferiority_claim_normal_form():
    claim = parse_claim("radlora.test_accuracy >= lora.test_accuracy - 0.01")
    assert coefficients(claim) == {RAD: 1.0, LORA: -1.0}
    assert claim.expr.constant == pytest.approx(0.01)
    assert claim.lower == 0.0 and claim.upper is None
    assert claim.canonical() == "0 <= radlora.test_accuracy - lora.test_accuracy + 0.01"


def test_constant_on_the_left_is_oriented_so_the_metric_is_positive():
    claim = parse_claim("0.25 >= radlora.flops_ratio")
    assert coefficients(claim) == {MetricRef("radlora", "flops_ratio"): 1.0}
    assert claim.expr.constant == pytest.approx(-0.25)
    assert (claim.lower, claim.upper) == (None, 0.0)
    assert claim.canonical() == "radlora.flops_ratio - 0.25 <= 0"


def test_strictness_moves_with_the_bound_when_oriented():
    claim = parse_claim("0.25 > a.x")
    assert claim.upper == 0.0 and claim.upper_strict and claim.lower is None


def test_multiplication_and_division_by_constants():
    claim = parse_claim("radlora.active_layers <= 0.5 * lora.active_layers")
    assert coefficients(claim) == {
        MetricRef("radlora", "active_layers"): 1.0,
        MetricRef("lora", "active_layers"): -0.5,
    }
    claim = parse_claim("a.x <= adalora.base_memory_mb / 5")
    assert coefficients(claim) == {A: 1.0, MetricRef("adalora", "base_memory_mb"): pytest.approx(-0.2)}


def test_parentheses_unary_minus_and_distribution():
    claim = parse_claim("-(a.x - 2 * (b.y + 1)) * 3 < -6")
    # -3 a.x + 6 b.y + 6 + 6 < 0, oriented: 3 a.x - 6 b.y - 12 > 0
    assert coefficients(claim) == {A: 3.0, B: -6.0}
    assert claim.expr.constant == pytest.approx(-12.0)
    assert claim.lower == 0.0 and claim.lower_strict and claim.upper is None


def test_repeated_references_are_combined():
    claim = parse_claim("a.x + a.x >= b.y + 0.5 * a.x")
    assert coefficients(claim) == {A: 1.5, B: -1.0}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("a.x >= 25%", 0.25),
        ("a.x >= 1e-3", 0.001),
        ("a.x >= 2.5E+2", 250.0),
        ("a.x >= .5", 0.5),
        ("a.x >= 3.", 3.0),
        ("a.x >= 12", 12.0),
        ("a.x >= 0.5%", 0.005),
    ],
)
def test_number_formats(text, value):
    assert parse_claim(text).expr.constant == pytest.approx(-value)


def test_range_claim():
    claim = parse_claim("dora.test_accuracy in [0.85, 95%]")
    assert claim.kind == "range"
    assert coefficients(claim) == {MetricRef("dora", "test_accuracy"): 1.0}
    assert (claim.lower, claim.upper) == (0.85, 0.95)
    assert not claim.lower_strict and not claim.upper_strict
    assert claim.canonical() == "0.85 <= dora.test_accuracy <= 0.95"


def test_range_bounds_may_be_constant_expressions_and_negative_subjects_flip():
    claim = parse_claim("-a.x in [-(1/2), 0]")
    assert coefficients(claim) == {A: 1.0}
    assert (claim.lower, claim.upper) == (0.0, 0.5)


def test_range_on_a_difference():
    claim = parse_claim("a.x - b.y in [-0.1, 0.2]")
    assert coefficients(claim) == {A: 1.0, B: -1.0}
    assert (claim.lower, claim.upper) == (-0.1, 0.2)


def test_within_claim_is_a_symmetric_band_on_the_difference():
    claim = parse_claim("pissa.test_accuracy within 0.02 of lora.test_accuracy")
    assert claim.kind == "within"
    assert coefficients(claim) == {MetricRef("pissa", "test_accuracy"): 1.0, LORA: -1.0}
    assert (claim.lower, claim.upper) == (-0.02, 0.02)
    assert claim.canonical() == "-0.02 <= pissa.test_accuracy - lora.test_accuracy <= 0.02"


def test_within_zero_and_within_a_constant():
    assert (parse_claim("a.x within 0 of b.y").lower, parse_claim("a.x within 0 of b.y").upper) == (0.0, 0.0)
    claim = parse_claim("a.x within 1% of 0.9")
    assert coefficients(claim) == {A: 1.0} and claim.expr.constant == pytest.approx(-0.9)
    assert claim.upper == pytest.approx(0.01)


def test_unicode_operators_and_minus_are_accepted():
    assert parse_claim("a.x ≥ b.y − 0.01").canonical() == parse_claim("a.x >= b.y - 0.01").canonical()
    assert parse_claim("a.x ≤ 1").upper == 0.0


def test_keywords_are_only_keywords_outside_references():
    claim = parse_claim("in.within >= of.in")
    assert claim.references() == [MetricRef("in", "within"), MetricRef("of", "in")]


def test_references_in_order_of_appearance_and_arms():
    claim = parse_claim("b.y + a.x <= 2 * b.z")
    assert claim.references() == [B, A, MetricRef("b", "z")]
    assert claim.arms() == ["b", "a"]


def test_str_is_the_text_as_written_and_claims_are_hashable():
    text = "  a.x   >=  b.y - 0.01 "
    claim = parse_claim(text)
    assert str(claim) == "a.x   >=  b.y - 0.01"
    assert parse_claim("a.x >= b.y - 0.01").expr == claim.expr
    assert len({claim, parse_claim(text)}) == 1


def test_holds_at_respects_strictness():
    assert parse_claim("a.x <= 0.25").holds_at(0.0)  # D = a.x - 0.25 = 0
    assert not parse_claim("a.x < 0.25").holds_at(0.0)
    assert parse_claim("a.x in [1, 2]").holds_at(2.0) and not parse_claim("a.x in [1, 2]").holds_at(2.1)


def test_linear_expr_arithmetic_and_text():
    expr = LinearExpr(1.0, {A: 2.0}) - LinearExpr(0.5, {A: 2.0, B: 1.0})
    assert dict(expr.coefficients) == {B: -1.0}  # zero coefficients are dropped
    assert str(expr) == "-b.y + 0.5"
    assert expr.evaluate({B: 2.0}) == pytest.approx(-1.5)
    assert str(LinearExpr(0.0, {A: 0.5})) == "0.5 * a.x"


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("", 1, "empty claim"),
        ("   ", 4, "empty claim"),
        ("lora.test_accuracy", 19, "expected a comparison operator (<, <=, >, >=)"),
        ("lora.test_accuracy 0.9", 20, "after 'lora.test_accuracy', got '0.9'"),
        ("lora >= 0.9", 1, "'lora' is not a metric reference"),
        ("a. >= 1", 3, "expected a metric name after 'a.'"),
        ("a.5 >= 1", 3, "expected a metric name after 'a.'"),
        ("a.b.c >= 1", 4, "too many dots"),
        ("a.x == b.y", 5, "use 'X within m of Y'"),
        ("a.x = 1", 5, "equality"),
        ("a.x != 1", 5, "not supported"),
        ("a.x * b.y >= 1", 5, "claims must be linear in metrics"),
        ("(a.x + 1) * (b.y - 1) >= 1", 11, "claims must be linear in metrics"),
        ("a.x / b.y <= 0.5", 5, "cannot divide by 'b.y'"),
        ("1 / a.x <= 0.5", 3, "claims must be linear in metrics"),
        ("a.x / (2 - 2) >= 1", 5, "division by zero"),
        ("(a.x >= 1", 6, "missing ')' to close the '(' at column 1"),
        ("(a.x + 1 >= 1", 10, "missing ')'"),
        ("a.x >= (1 + 2", 14, "missing ')'"),
        ("a.x >= ()", 9, "empty parentheses"),
        ("a.x >= 1)", 9, "unexpected ')' after the end of the claim"),
        ("a.x > 0 < 1", 9, "only one comparison per claim"),
        ("a.x >=", 7, "expected an expression after '>='"),
        ("a.x >= 1 +", 11, "ends too early"),
        ("a.x >= * 2", 8, "got '*'"),
        ("a.x >= $", 8, "unexpected character '$'"),
        ("a.x >= 2lora.x", 8, "'2lora.x' is not a number"),
        ("a.x >= 1.2.3", 8, "'1.2.3' is not a number"),
        ("a.x >= 1e", 8, "'1e' is not a number"),
        ("a.x % 2 >= 1", 5, "'%' must directly follow a number"),
        ("1 < 2", 1, "does not depend on any metric"),
        ("a.x - a.x >= 0", 1, "cancel out"),
        ("0 * a.x >= 1", 1, "cancel out"),
        ("a.x in 0.2, 0.3", 8, "expected '['"),
        ("a.x in [0.2 0.3]", 13, "expected ','"),
        ("a.x in [0.2, 0.3", 17, "expected ']'"),
        ("a.x in [b.y, 1]", 9, "lower bound must be a number, not a metric ('b.y')"),
        ("a.x in [0, b.y]", 12, "upper bound must be a number"),
        ("a.x in [0.3, 0.2]", 9, "empty range"),
        ("a.x in []", 9, "expected a number for the range's lower bound"),
        ("a.x within b.y of 1", 12, "margin after 'within' must be a number"),
        ("a.x within -0.1 of b.y", 12, "the margin must be >= 0"),
        ("a.x within 0.1 b.y", 16, "expected 'of' after the margin '0.1'"),
        ("a.x within 0.1 of", 16, "expected an expression after 'of'"),
        ("a.x within", 11, "expected a number for the margin"),
        ("a.x IN [0, 1]", 5, "expected a comparison operator"),
        ("a.é >= 1", 3, "expected a metric name after 'a.'"),
    ],
)
def test_syntax_errors_point_at_the_column_and_explain(text, column, fragment):
    with pytest.raises(ClaimSyntaxError) as caught:
        parse_claim(text)
    assert fragment in caught.value.message
    assert caught.value.column == column, caught.value.message


def test_syntax_error_is_a_value_error_with_a_caret():
    with pytest.raises(ValueError) as caught:
        parse_claim("a.x * b.y >= 1")
    error = caught.value
    assert isinstance(error, ClaimSyntaxError)
    assert str(error).startswith("column 5: ")
    assert error.caret("a.x * b.y >= 1").splitlines()[1] == "    ^"


def test_non_text_is_rejected():
    with pytest.raises(ClaimSyntaxError):
        parse_claim(0.5)  # type: ignore[arg-type]


def test_nothing_is_evaluated_as_python():
    for text in ("__import__('os').system('true') >= 1", "a.__class__ >= 1 if 1 else 0", "a.x >= 1; b.y"):
        with pytest.raises(ClaimSyntaxError):
            parse_claim(text)


def test_random_text_either_parses_or_raises_a_claim_syntax_error():
    rng = random.Random(3)
    alphabet = list("ab._xy019 .e%()[],+-*/<>=!") + ["in", "within", "of", " a.x ", "²", "é", "\u2212"]
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        try:
            claim = parse_claim(text)
        except ClaimSyntaxError as error:
            assert 1 <= error.column <= len(text) + 1, (text, error)
        else:
            assert claim.references()


REFS = {"a.x": A, "b.y": B, "c.z": MetricRef("c", "z")}


def random_expr(rng: random.Random, depth: int = 0) -> tuple[str, Callable[[dict], float], bool]:
    """A random linear expression: its text, how to compute it, whether it has a metric."""
    choice = rng.random() if depth < 3 else rng.random() * 0.5
    if choice < 0.25:
        number = rng.choice([0.5, 2.0, 3.0, 0.25, 10.0])
        return f"{number:g}", lambda env: number, False
    if choice < 0.5:
        ref = rng.choice(list(REFS))
        return ref, lambda env: env[REFS[ref]], True
    left, f, f_has = random_expr(rng, depth + 1)
    right, g, g_has = random_expr(rng, depth + 1)
    op = rng.choice("+-*/") if not (f_has and g_has) else rng.choice("+-")
    if op == "/" and g_has:
        op = "*"
    functions = {
        "+": lambda env: f(env) + g(env),
        "-": lambda env: f(env) - g(env),
        "*": lambda env: f(env) * g(env),
        "/": lambda env: f(env) / g(env),
    }
    wrap = lambda part: f"({part})" if " " in part else part  # noqa: E731 - keeps the oracle's precedence
    text = f"{wrap(left)} {op} {wrap(right)}"
    if rng.random() < 0.2:
        text = f"-({text})"
        return text, lambda env: -functions[op](env), f_has or g_has
    return text, functions[op], f_has or g_has


def test_the_normal_form_agrees_with_direct_evaluation_of_random_claims():
    rng = random.Random(11)
    checked = 0
    for _ in range(800):
        left, f, _f_has = random_expr(rng)
        right, g, _g_has = random_expr(rng)
        op = rng.choice(["<", "<=", ">", ">="])
        text = f"{left} {op} {right}"
        try:
            claim = parse_claim(text)
        except ClaimSyntaxError as error:
            expected = ("cancel out", "does not depend", "division by zero")
            assert any(k in error.message for k in expected), text
            continue
        for _ in range(5):
            env = {ref: rng.uniform(-3, 3) for ref in REFS.values()}
            lhs, rhs = f(env), g(env)
            if abs(lhs - rhs) < 1e-6:
                continue
            expected = {"<": lhs < rhs, "<=": lhs <= rhs, ">": lhs > rhs, ">=": lhs >= rhs}[op]
            assert claim.holds_at(claim.expr.evaluate(env)) == expected, text
            checked += 1
    assert checked > 1500
