"""Claims + confirmation runs -> verdicts (SUPPORTED / REFUTED / INCONCLUSIVE).

Each claim gets two one-sided tests at level ``alpha = 1 - confidence``: rejecting
"the claim fails" supports it, rejecting "the claim holds" refutes it. Across the
claims of one hypothesis, Holm's step-down runs over each of the two families, so
P(any false SUPPORTED) <= alpha and P(any false REFUTED) <= alpha, whatever the
dependence between claims. With one claim this is exactly the interval rule: the
one-sided (1 - alpha) bounds lie wholly inside (SUPPORTED) or wholly outside
(REFUTED) the claimed region. docs/claims.md has the details.

Two rules keep the evidence whole. A claim is judged only when every confirmation seed
of its arms finished with a finite value of each metric it uses: a failed seed, or a
missing or non-finite value, makes it INCONCLUSIVE with the arm, seed and cause named
(judging the seeds that happened to survive would select on the outcome). And no
spread across seeds counts as an exact comparison only for metrics the arm's method
fixes by configuration (``Method.exact_metrics``); any other metric that gave one value
on every seed has a spread that n seeds could not show, so the claim is INCONCLUSIVE.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.claims import Claim, MetricRef, parse_claim
from orchestrator.judge import stats
from orchestrator.judge.examples import PerExample
from orchestrator.judge.settle import SettlingBudget, settling_budget
from orchestrator.judge.stats import Estimate, Holm, OneSided, ReferenceData, Unavailable

VerdictKind = Literal["SUPPORTED", "REFUTED", "INCONCLUSIVE"]
# Seeds are ints; JSON turns keys into text, so read "3" back as 3 (and keep odd seeds as text).
Seed = Annotated[int | str, Field(union_mode="left_to_right")]


class ReferenceEvidence(BaseModel):
    """The confirmation values of one ``arm.metric`` that a verdict used."""

    model_config = ConfigDict(frozen=True)

    mean: float | None
    sd: float | None
    n: int
    values: dict[Seed, float]
    excluded: dict[Seed, str]


class Verdict(BaseModel):
    """The judgement of one claim, with every number behind it.

    ``estimate``, ``ci_low``, ``ci_high``, ``lower``, ``upper`` and ``boundary`` are on the
    scale of ``quantity`` (the claim's metrics without its constant), e.g. for
    ``a.acc >= b.acc - 0.01`` the quantity is ``a.acc - b.acc`` and the boundary -0.01.
    ``ci_low``/``ci_high`` are one-sided bounds at level ``confidence`` each (together a
    central interval at ``2 * confidence - 1``), cut to the values the quantity can take;
    ``confidence`` is the level after Holm (and, with sequential confirmation, after the
    look's share of alpha). ``se_seeds``/``se_examples`` split the standard error into the
    seeds' and the test examples' parts (``examples``: how many test examples; 0 when the
    runs kept no per-example outcomes). ``look``: the look of sequential confirmation
    whose data gave this verdict (1 without it).
    """

    model_config = ConfigDict(frozen=True)

    claim: str
    kind: str
    canonical: str
    quantity: str
    verdict: VerdictKind
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float
    interval_method: str
    n: dict[str, int]
    lower: float | None
    upper: float | None
    boundary: float | None
    effect_size: float | None
    effect_d: float | None
    sd: float | None
    df: float | None
    seeds_to_settle: int | None
    examples_to_settle: int | None = None
    se_seeds: float | None = None
    se_examples: float | None = None
    examples: int = 0
    look: int = 1
    p_holds: float | None
    p_fails: float | None
    p_holds_adjusted: float | None
    p_fails_adjusted: float | None
    family_size: int
    holm: bool
    reason: str
    evidence: dict[str, ReferenceEvidence]

    def to_row(self) -> dict[str, str]:
        """Display strings for one row of a verdict table."""
        interval = "-" if self.ci_low is None else f"[{_num(self.ci_low)}, {_num(self.ci_high)}]"
        p = self.p_fails_adjusted if self.verdict != "REFUTED" else self.p_holds_adjusted
        return {
            "claim": self.claim,
            "verdict": self.verdict,
            "estimate": "-" if self.estimate is None else _num(self.estimate),
            "bounds": interval,
            "confidence": _pct(self.confidence),
            "method": self.interval_method,
            "n": ", ".join(f"{arm}={k}" for arm, k in self.n.items()) or "-",
            "p": "-" if p is None else f"{p:.3g}",
            "effect_d": "-" if self.effect_d is None else f"{self.effect_d:.2f}",
            "seeds_to_settle": "-" if self.seeds_to_settle is None else str(self.seeds_to_settle),
            "reason": self.reason,
        }


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _pct(level: float) -> str:
    return f"{100 * level:.3g}%"


@dataclass(frozen=True)
class _Assessment:
    claim: Claim
    data: dict
    outcome: Estimate | Unavailable
    p: OneSided | None


@dataclass(frozen=True)
class _Runs:
    """What the judge knows about the confirmation runs besides their values."""

    exact: Mapping[str, Iterable[str]]
    failed: Mapping[str, Mapping[int, str]]
    per_example: PerExample | None = None


def _assess(claim: Claim, samples: Mapping, runs: _Runs) -> _Assessment:
    data, problems = stats.reference_data(claim, samples, runs.failed)
    incomplete = stats.gaps(data)
    if problems or incomplete:
        n = {arm: next((len(d.values) for r, d in data.items() if r.arm == arm), 0) for arm in claim.arms()}
        value = None if problems else stats.estimate(claim, data).value
        reasons = problems + ([_incomplete_reason(incomplete)] if incomplete else [])
        return _Assessment(claim, data, Unavailable("; ".join(reasons), n, value), None)
    outcome = stats.estimate(claim, data, runs.per_example)
    if isinstance(outcome, Estimate):
        varying = stats.varying_without_spread(claim, outcome, runs.exact)
        if varying:
            outcome = Unavailable(_no_spread_reason(claim, outcome, varying), outcome.n, outcome.value)
    p = stats.one_sided_p(claim, outcome) if isinstance(outcome, Estimate) else None
    return _Assessment(claim, data, outcome, p)


def _incomplete_reason(incomplete: list[str]) -> str:
    return (
        "; ".join(incomplete) + "; a claim is judged only when every confirmation seed of its arms finished "
        "with a finite value of each metric it uses, not on the seeds that happened to survive"
    )


def _no_spread_reason(claim: Claim, est: Estimate, varying: list[MetricRef]) -> str:
    quantity = str(claim.expr.variable_part())
    names = " and ".join(str(ref) for ref in varying)
    seeds = _seeds_phrase(est)
    if [str(ref) for ref in varying] == [quantity]:
        return (
            f"every seed gave the same value of {quantity} ({_num(est.value)}), which varies with the seed "
            f"(its method does not fix it); its spread cannot be estimated from {seeds}"
        )
    verb = "varies" if len(varying) == 1 else "vary"
    return (
        f"every seed gave the same value of {quantity} ({_num(est.value)}), but {names} {verb} with the seed "
        f"(the method does not fix {'it' if len(varying) == 1 else 'them'}); the spread cannot be estimated "
        f"from {seeds}"
    )


def judge_claims(
    claims: Sequence[Claim | str],
    samples: Mapping[str, Mapping[str, Mapping[int, float]]],
    confidence: float = 0.95,
    family_wise: bool | None = None,
    exact_metrics: Mapping[str, Iterable[str]] | None = None,
    failed: Mapping[str, Mapping[int, str]] | None = None,
    per_example: PerExample | None = None,
    alpha: float | None = None,
    look: int = 1,
) -> list[Verdict]:
    """Judge every claim of one hypothesis on its confirmation runs.

    Example:
        >>> runs = {"a": {"acc": {1: 0.91, 2: 0.93, 3: 0.92}}}
        >>> judge_claims(["a.acc >= 0.85"], runs)[0].verdict
        'SUPPORTED'
        >>> counts = {"a": {"trainable_params": {1: 4096, 2: 4096}}}
        >>> judge_claims(["a.trainable_params <= 5000"], counts)[0].verdict   # spread unknown
        'INCONCLUSIVE'
        >>> judge_claims(["a.trainable_params <= 5000"], counts, exact_metrics={"a": {"trainable_params"}})[0].verdict
        'SUPPORTED'

    Args:
        claims: parsed claims (or their text).
        samples: arm -> metric -> seed -> value, from the confirmation runs that finished.
        confidence: 1 - alpha, the error rate allowed for a false SUPPORTED (and,
            separately, for a false REFUTED) over the whole family.
        family_wise: Holm across the claims; None means on when there are >= 2 claims.
        exact_metrics: arm -> the metrics its method fixes by configuration
            (``Method.exact_metrics``); only these are compared exactly when every seed
            gives the same value. None: no metric is known to be fixed.
        failed: arm -> seed -> error of each confirmation run that failed. A claim over
            an arm with a failed seed, or with a missing or non-finite value of a metric
            it uses, is INCONCLUSIVE, and its reason names the arm, seed and cause.
        per_example: arm -> metric -> seed -> per-example values on the test split whose
            mean is the metric (``evidence.per_example_outcomes``); their sampling
            variance joins the seeds' (``judge.examples``). None: seed variance only.
        alpha: the error rate to spend here, when it is less than ``1 - confidence``
            (one look of sequential confirmation: ``judge.sequential``).
        look: which look of sequential confirmation this is, recorded in the verdicts.
    """
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    parsed = [c if isinstance(c, Claim) else parse_claim(c) for c in claims]
    alpha = 1.0 - confidence if alpha is None else alpha
    use_holm = len(parsed) >= 2 if family_wise is None else bool(family_wise)
    runs = _Runs(
        exact_metrics if isinstance(exact_metrics, Mapping) else {},
        failed if isinstance(failed, Mapping) else {},
        per_example if isinstance(per_example, Mapping) else None,
    )
    assessed = [_assess(c, samples if isinstance(samples, Mapping) else {}, runs) for c in parsed]
    p_fails = [a.p.p_fails if a.p else 1.0 for a in assessed]
    p_holds = [a.p.p_holds if a.p else 1.0 for a in assessed]
    if use_holm:
        support, refute = stats.holm(p_fails, alpha), stats.holm(p_holds, alpha)
    else:
        support, refute = _unadjusted(p_fails, alpha), _unadjusted(p_holds, alpha)
    return [_verdict(a, i, support, refute, use_holm, len(parsed), look) for i, a in enumerate(assessed)]


def _unadjusted(p_values: list[float], alpha: float) -> Holm:
    return Holm([p <= alpha for p in p_values], [alpha] * len(p_values), list(p_values))


def _seed(seed: object) -> int | str:
    return seed if isinstance(seed, (int, str)) and not isinstance(seed, bool) else str(seed)


def _evidence(data: Mapping[object, ReferenceData]) -> dict[str, ReferenceEvidence]:
    evidence = {}
    for ref, ref_data in data.items():
        values = list(ref_data.values.values())
        mean, sd = stats.describe(values)
        evidence[str(ref)] = ReferenceEvidence(
            mean=mean,
            sd=sd,
            n=len(values),
            values={_seed(s): v for s, v in ref_data.values.items()},
            excluded={_seed(s): why for s, why in ref_data.excluded.items()},
        )
    return evidence


def _regions(claim: Claim, lower: float | None, upper: float | None) -> tuple[str, str]:
    """Where the claim holds and where it fails, in words, on the quantity's scale."""
    if lower is not None and upper is not None:
        band = f"[{_num(lower)}, {_num(upper)}]"
        return f"inside {band}", f"outside {band}"
    if lower is not None:
        bound = _num(lower)
        return (
            (f"above {bound}", f"at or below {bound}")
            if claim.lower_strict
            else (f"at or above {bound}", f"below {bound}")
        )
    bound = _num(upper)
    return (
        (f"below {bound}", f"at or above {bound}")
        if claim.upper_strict
        else (f"at or below {bound}", f"above {bound}")
    )


def _nearest(value: float, lower: float | None, upper: float | None) -> float:
    candidates = [b for b in (lower, upper) if b is not None]
    return min(candidates, key=lambda b: abs(value - b))


def _verdict(a: _Assessment, i: int, support: Holm, refute: Holm, use_holm: bool, m: int, look: int) -> Verdict:
    claim = a.claim
    lower, upper = stats.bounds_of(claim)
    quantity = str(claim.expr.variable_part())
    common = dict(
        claim=claim.text,
        kind=claim.kind,
        canonical=claim.canonical(),
        quantity=quantity,
        lower=lower,
        upper=upper,
        family_size=m,
        holm=use_holm,
        evidence=_evidence(a.data),
        look=look,
    )
    outcome = a.outcome
    if isinstance(outcome, Unavailable):
        boundary: float | None = None
        effect_size: float | None = None
        if outcome.value is not None:
            boundary = _nearest(outcome.value, lower, upper)
            effect_size = outcome.value - boundary
        return Verdict(
            **common,
            verdict="INCONCLUSIVE",
            estimate=outcome.value,
            ci_low=None,
            ci_high=None,
            confidence=1.0 - support.levels[i],
            interval_method="none",
            n=outcome.n,
            boundary=boundary,
            effect_size=effect_size,
            effect_d=None,
            sd=None,
            df=None,
            seeds_to_settle=None,
            p_holds=None,
            p_fails=None,
            p_holds_adjusted=None,
            p_fails_adjusted=None,
            reason=f"No interval: {outcome.reason}.",
        )

    est, p = outcome, a.p
    assert p is not None
    leans_true = claim.holds_at(est.value + claim.expr.constant)
    if support.rejected[i]:
        verdict, level = "SUPPORTED", support.levels[i]
    elif refute.rejected[i]:
        verdict, level = "REFUTED", refute.levels[i]
    else:
        verdict, level = "INCONCLUSIVE", (support.levels[i] if leans_true else refute.levels[i])
    ci_low, ci_high = stats.interval(est, level, stats.quantity_range(claim))
    boundary = _nearest(est.value, lower, upper)
    distance = abs(est.value - boundary)
    settle = (
        settling_budget(distance, est, level) if verdict == "INCONCLUSIVE" else SettlingBudget(None, None, None, "")
    )
    reason = _reason(
        claim,
        verdict,
        est,
        level,
        (ci_low, ci_high),
        settle.text,
        holm_blocked=use_holm and (p.p_fails if leans_true else p.p_holds) <= level,
    )
    return Verdict(
        **common,
        verdict=verdict,
        estimate=est.value,
        ci_low=ci_low,
        ci_high=ci_high,
        confidence=1.0 - level,
        interval_method=est.method,
        n=est.n,
        boundary=boundary,
        effect_size=est.value - boundary,
        effect_d=(est.value - boundary) / est.sd if est.sd > 0 else None,
        sd=est.sd,
        df=est.df,
        seeds_to_settle=settle.seeds,
        examples_to_settle=settle.examples,
        se_seeds=math.sqrt(est.seeds_part),
        se_examples=math.sqrt(est.example_variance),
        examples=est.examples,
        p_holds=p.p_holds,
        p_fails=p.p_fails,
        p_holds_adjusted=refute.adjusted[i],
        p_fails_adjusted=support.adjusted[i],
        reason=reason + ".",
    )


def _reason(
    claim: Claim,
    verdict: str,
    est: Estimate,
    level: float,
    bounds: tuple[float, float],
    settle: str,
    holm_blocked: bool,
) -> str:
    """One plain sentence (without its final period) that says why."""
    lower, upper = stats.bounds_of(claim)
    holds, fails = _regions(claim, lower, upper)
    quantity = str(claim.expr.variable_part())
    seeds = _seeds_phrase(est)
    if est.se == 0.0:
        where = holds if verdict == "SUPPORTED" else fails
        return (
            f"Every seed gives {quantity} = {_num(est.value)} (no variance across seeds: the methods fix "
            f"these metrics by configuration), "
            f"which is {where}, so the claim {'holds' if verdict == 'SUPPORTED' else 'fails'} ({seeds})"
        )
    shown = (
        f"{quantity} is {_num(est.value)} with one-sided {_pct(1.0 - level)} bounds "
        f"[{_num(bounds[0])}, {_num(bounds[1])}]"
    )
    how = f"{est.method}, {seeds}"
    if verdict == "SUPPORTED":
        return f"{shown}, entirely {holds} as claimed ({how})"
    if verdict == "REFUTED":
        return f"{shown}, entirely {fails}, against the claim ({how})"
    if holm_blocked:
        return (
            f"{shown}, which would settle it on its own, but Holm's step-down stopped earlier "
            f"at a claim with a smaller p-value that was not settled ({how})"
        )
    more = f"; {settle}" if settle else ""
    return f"{shown}: partly {holds} and partly {fails}, so neither is shown ({how}){more}"


def _seeds_phrase(est: Estimate) -> str:
    counts = set(est.n.values())
    examples = f" on {est.examples} test examples" if est.examples else ""
    if len(counts) == 1:
        count = counts.pop()
        return f"{count} seeds" + (" per arm" if len(est.n) > 1 else "") + examples
    return "seeds " + ", ".join(f"{arm}={k}" for arm, k in est.n.items()) + examples


__all__ = ["ReferenceEvidence", "Verdict", "judge_claims"]
