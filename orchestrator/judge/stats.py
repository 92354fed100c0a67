"""The numbers behind a verdict: estimates, t intervals, one-sided p-values, Holm.

Pure functions on plain data; ``verdicts`` turns their output into sentences.
scipy's ``special`` functions are used directly (not ``scipy.stats``): the calibration
test judges tens of thousands of simulated claims, and the distribution objects are
two orders of magnitude slower per call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from scipy import special

from orchestrator.claims import Claim, MetricRef
from orchestrator.judge import examples
from orchestrator.judge.examples import ExampleComponent, PerExample

Samples = dict[str, dict[str, dict[int, float]]]
"""arm -> metric -> seed -> value, from the confirmation runs."""

# Relative size under which a spread or a gap is floating-point noise, not data.
ZERO_SPREAD = 1e-12
EXACT_TOLERANCE = 1e-9
# A failed run's error text in a reason: its first line, at most this many characters
# (the recorder's "Type: message" reasons are 40-150 characters; tracebacks are longer).
ERROR_CHARS = 160
FAILED, MISSING, NOT_FINITE = "run failed", "missing", "not finite"
OTHER_METRIC_MISSING = "another metric of this arm is missing on this seed"

PAIRED, ONE_SAMPLE, WELCH, EXACT = "paired t", "one-sample t", "Welch t", "exact (no variance)"
WITH_EXAMPLES = " + test examples"


@dataclass(frozen=True)
class ReferenceData:
    """The finite values of one reference that the claim uses, and what was left out
    (seed -> ``missing``, ``not finite``, ``run failed: <error>``, or that another metric
    of the arm is missing on the seed)."""

    ref: MetricRef
    values: dict[int, float]
    excluded: dict[int, str]


@dataclass(frozen=True)
class Estimate:
    """An estimate of ``V``, the claim's quantity without its constant.

    ``se == 0`` means every seed gave the same value (an exact comparison, which the
    verdicts allow only for metrics fixed by configuration); ``sd`` is
    the spread of ``V`` for one seed of every arm, the unit of the standardized effect.
    """

    value: float
    se: float
    df: float
    sd: float
    method: str
    n: dict[str, int]
    arm_variances: dict[str, float] = field(default_factory=dict)
    seed_variance: float | None = None  # the seeds' part of se**2 (None: all of it)
    example_variance: float = 0.0  # the test examples' part of se**2 (``judge.examples``)
    examples: int = 0  # test examples behind it (0: seed variance only)
    example_sd: float = 0.0  # sd of one example's contribution to V

    @property
    def seeds_part(self) -> float:
        return self.se**2 if self.seed_variance is None else self.seed_variance


@dataclass(frozen=True)
class Unavailable:
    """Why no interval can be computed; ``value`` is a point estimate when one exists."""

    reason: str
    n: dict[str, int]
    value: float | None = None


def _is_finite(value: object) -> bool:
    try:
        return value is not None and math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _metric_runs(arm_runs: object) -> dict[str, Mapping]:
    """An arm's ``metric -> seed -> value`` with anything that is not a mapping dropped."""
    if not isinstance(arm_runs, Mapping):
        return {}
    return {metric: by_seed for metric, by_seed in arm_runs.items() if isinstance(by_seed, Mapping)}


def reference_data(
    claim: Claim,
    samples: Mapping,
    failed: Mapping | None = None,
) -> tuple[dict[MetricRef, ReferenceData], list[str]]:
    """Values per reference on the seeds its arm can use, and problems that stop the judge.

    Within one arm, only seeds where every referenced metric of that arm is finite are
    used, so metrics of the same seed stay paired. Missing and non-finite values, and
    the seeds whose confirmation run failed (``failed``: arm -> seed -> error), are
    excluded and recorded with the reason; ``gaps`` turns them into words.
    """
    data: dict[MetricRef, ReferenceData] = {}
    problems: list[str] = []
    references = claim.references()
    for arm in claim.arms():
        refs = [r for r in references if r.arm == arm]
        arm_runs = _metric_runs(samples.get(arm) if isinstance(samples, Mapping) else None)
        arm_failed = _failures_of(failed, arm)
        if not any(arm_runs.values()) and not arm_failed:
            problems.append(f"no confirmation runs for arm {arm}")
            continue
        all_seeds = list(dict.fromkeys([*(s for by_seed in arm_runs.values() for s in by_seed), *arm_failed]))
        finite: dict[MetricRef, dict] = {}
        for ref in refs:
            if ref.metric not in arm_runs and any(arm_runs.values()):
                known = ", ".join(sorted(map(str, arm_runs)))
                problems.append(f"arm {arm} reports no metric '{ref.metric}' (it reports: {known})")
            by_seed = arm_runs.get(ref.metric, {})
            finite[ref] = {s: float(v) for s, v in by_seed.items() if _is_finite(v) and s not in arm_failed}
        usable = [s for s in all_seeds if all(s in finite[r] for r in refs)]
        usable_set = set(usable)
        for ref in refs:
            by_seed = arm_runs.get(ref.metric, {})
            excluded = {}
            for s in all_seeds:
                if s in usable_set:
                    continue
                if s in arm_failed:
                    excluded[s] = f"{FAILED}: {arm_failed[s]}"
                elif s not in by_seed:
                    excluded[s] = MISSING
                elif s not in finite[ref]:
                    excluded[s] = NOT_FINITE
                else:
                    excluded[s] = OTHER_METRIC_MISSING
            data[ref] = ReferenceData(ref, {s: finite[ref][s] for s in usable}, excluded)
            if ref.metric in arm_runs and not finite[ref]:
                problems.append(f"no finite values of {ref}")
    return data, problems


def _failures_of(failed: Mapping | None, arm: str) -> dict[object, str]:
    """An arm's failed seeds -> the first line of their error, shortened."""
    by_seed = failed.get(arm) if isinstance(failed, Mapping) else None
    if not isinstance(by_seed, Mapping):
        return {}
    return {seed: short_error(why) for seed, why in by_seed.items()}


def short_error(error: object) -> str:
    """The first non-empty line of a run's error, at most ERROR_CHARS characters."""
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    text = lines[0] if lines else "no error recorded"
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3].rstrip() + "..."


def gaps(data: Mapping[MetricRef, ReferenceData]) -> list[str]:
    """Each seed the claim cannot use, named with its arm and cause, in seed order per arm:
    "arm b, seed 2: b.acc is not finite", "arm lora, seed 1001: its run failed (...)"."""
    found: dict[tuple[str, object], list[str]] = {}
    for ref, ref_data in data.items():
        for seed, why in ref_data.excluded.items():
            causes = found.setdefault((ref.arm, seed), [])
            if why.startswith(FAILED):
                cause = f"its run failed ({why[len(FAILED) + 2 :]})"
            elif why in (MISSING, NOT_FINITE):
                cause = f"{ref} is {why}"
            else:
                continue  # the other metric's own entry says why
            if cause not in causes:
                causes.append(cause)
    return [f"arm {arm}, seed {seed}: {' and '.join(causes)}" for (arm, seed), causes in found.items() if causes]


def varying_without_spread(claim: Claim, est: Estimate, exact: Mapping) -> list[MetricRef]:
    """The claim's metrics that the configuration does not fix, when every seed gave the
    same value of the quantity (empty otherwise, or when all are fixed: then the exact
    comparison is right). ``exact``: arm -> metric names its method fixes."""
    if est.se != 0.0:
        return []
    fixed = {arm: set(names) for arm, names in exact.items()} if isinstance(exact, Mapping) else {}
    return [ref for ref in claim.references() if ref.metric not in fixed.get(ref.arm, ())]


def estimate(
    claim: Claim, data: Mapping[MetricRef, ReferenceData], per_example: PerExample | None = None
) -> Estimate | Unavailable:
    """Paired (or one-sample) t when every arm has the same seeds, else Welch; plus the
    test examples' sampling variance where the runs kept per-example outcomes
    (``judge.examples``)."""
    try:
        result = _estimate(claim, data)
        if isinstance(result, Estimate) and per_example:
            found = examples.component(claim, {ref: d.values for ref, d in data.items()}, per_example)
            if found is not None:
                result = _with_examples(claim, result, found)
    except OverflowError:
        result = None
    if result is None or (
        isinstance(result, Estimate) and not all(map(math.isfinite, (result.value, result.se, result.df, result.sd)))
    ):
        n = {arm: next(len(d.values) for r, d in data.items() if r.arm == arm) for arm in claim.arms()}
        return Unavailable("the values are too large to compute a spread in floating point", n)
    return result


def _estimate(claim: Claim, data: Mapping[MetricRef, ReferenceData]) -> Estimate | Unavailable:
    coefficients = claim.expr.coefficients
    arms = claim.arms()
    per_arm: dict[str, dict] = {}  # arm -> seed -> that arm's part of V on the seed
    for arm in arms:
        refs = [r for r in coefficients if r.arm == arm]
        seeds = data[refs[0]].values
        per_arm[arm] = {s: math.fsum(coefficients[r] * data[r].values[s] for r in refs) for s in seeds}
    n = {arm: len(by_seed) for arm, by_seed in per_arm.items()}
    empty = [arm for arm in arms if n[arm] == 0]
    if empty:
        return Unavailable(f"no usable confirmation runs for arm {empty[0]}", n)

    first = per_arm[arms[0]]
    if all(per_arm[a].keys() == first.keys() for a in arms[1:]):
        per_seed = [math.fsum(per_arm[a][s] for a in arms) for s in first]
        return _one_sample(per_seed, ONE_SAMPLE if len(arms) == 1 else PAIRED, n)
    return _welch({arm: list(by_seed.values()) for arm, by_seed in per_arm.items()}, n)


def describe(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample sd for the evidence table; None where undefined or out of float range."""
    if not values:
        return None, None
    try:
        mean = _mean(values)
        sd = _sample_sd(values, mean) if len(values) > 1 else None
    except OverflowError:
        return None, None
    return mean, sd


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def _sample_sd(values: list[float], mean: float) -> float:
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _spread(values: list[float]) -> float:
    """Sample sd (ddof=1), with floating-point noise around identical values read as 0."""
    if len(values) < 2:
        return math.nan
    sd = _sample_sd(values, _mean(values))
    scale = max(1.0, max(abs(v) for v in values))
    return 0.0 if sd <= ZERO_SPREAD * scale else sd


def _one_sample(per_seed: list[float], method: str, n: dict[str, int]) -> Estimate | Unavailable:
    mean = _mean(per_seed)
    if len(per_seed) < 2:
        return Unavailable("only 1 seed per arm, so the spread across seeds is unknown", n, mean)
    sd = _spread(per_seed)
    if sd == 0.0:
        return Estimate(mean, 0.0, len(per_seed) - 1.0, 0.0, EXACT, n)
    return Estimate(mean, sd / math.sqrt(len(per_seed)), len(per_seed) - 1.0, sd, method, n)


def _welch(per_arm: dict[str, list[float]], n: dict[str, int]) -> Estimate | Unavailable:
    value = math.fsum(_mean(values) for values in per_arm.values())
    single = [arm for arm, count in n.items() if count < 2]
    if single:
        return Unavailable(
            f"arm {single[0]} has only 1 confirmation run, so its spread across seeds is unknown", n, value
        )
    variances = {arm: _spread(values) ** 2 for arm, values in per_arm.items()}
    se2 = sum(variances[a] / n[a] for a in per_arm)
    if se2 == 0.0:
        return Estimate(value, 0.0, float(sum(n.values()) - len(n)), 0.0, EXACT, n, variances)
    df = se2**2 / sum((variances[a] / n[a]) ** 2 / (n[a] - 1) for a in per_arm)
    return Estimate(value, math.sqrt(se2), df, math.sqrt(sum(variances.values())), WELCH, n, variances)


def _with_examples(claim: Claim, est: Estimate, part: ExampleComponent) -> Estimate:
    """The seed estimate with the test examples' variance added (``judge.examples``).

    The seed part's variance is floored at what the seed x example interaction alone
    puts into it, where the per-example data cover the whole of that part (all of the
    claim's references when the arms share their seeds, else the arm's references).
    Degrees of freedom: Welch-Satterthwaite over the seed part and the example part.
    """
    covered = set(part.references)
    if est.method == WELCH or (est.method == EXACT and est.arm_variances):
        floors = {
            arm: part.seed_floor.get(arm, 0.0)
            if all(r in covered for r in claim.references() if r.arm == arm)
            else 0.0
            for arm in est.n
        }
        variances = {arm: max(est.arm_variances.get(arm, 0.0), floors[arm]) for arm in est.n}
        seeds_part = sum(variances[a] / est.n[a] for a in est.n)
        terms = [(variances[a] / est.n[a]) ** 2 / (est.n[a] - 1) for a in est.n]
        seeds_df = seeds_part**2 / sum(terms) if seeds_part > 0 else math.inf
        sd, base = math.sqrt(sum(variances.values())), WELCH
    else:
        floor = part.seed_floor.get("*", 0.0) if covered == set(claim.references()) else 0.0
        count = next(iter(est.n.values()))
        per_seed = max(est.sd**2, floor)
        seeds_part, seeds_df, sd = per_seed / count, est.df, math.sqrt(per_seed)
        base = est.method if est.method != EXACT else (ONE_SAMPLE if len(est.n) == 1 else PAIRED)
    total = seeds_part + part.variance
    if total <= 0.0:
        return est  # nothing varies, on any seed or example: the exact case
    denominator = (seeds_part**2 / seeds_df if seeds_part > 0 else 0.0) + part.variance**2 / (part.examples - 1)
    return Estimate(
        est.value,
        math.sqrt(total),
        total**2 / denominator,
        sd,
        base + WITH_EXAMPLES,
        est.n,
        dict(est.arm_variances),
        seeds_part,
        part.variance,
        part.examples,
        part.per_example_sd,
    )


# ---------------------------------------------------------------------------- tests


@dataclass(frozen=True)
class OneSided:
    """One-sided p-values: ``p_fails`` tests "the claim fails", ``p_holds`` "it holds"."""

    p_fails: float
    p_holds: float


def bounds_of(claim: Claim) -> tuple[float | None, float | None]:
    """The claim's bounds on ``V`` (its quantity without the constant)."""
    c0 = claim.expr.constant
    lower = None if claim.lower is None else claim.lower - c0
    upper = None if claim.upper is None else claim.upper - c0
    return lower, upper


def one_sided_p(claim: Claim, est: Estimate) -> OneSided:
    """p-values of "the claim fails" and "the claim holds", from the t statistic.

    With a lower bound L and ``t = (V - L) / se``, ``P(T >= t)`` is the p-value of
    "V <= L" (the claim fails at or below L) and ``P(T <= t)`` that of "V >= L".
    To show a band claim holds, every bound must be cleared, so ``p_fails`` is the
    largest (intersection-union: TOST); crossing any one bound shows it fails, so
    ``p_holds`` is the smallest. A spread of 0 gives an exact 0 or 1; the verdicts
    reach this only for metrics that the arms' methods fix by configuration.
    """
    lower, upper = bounds_of(claim)
    if est.se == 0.0:
        holds = claim.holds_at(est.value + claim.expr.constant, EXACT_TOLERANCE)
        return OneSided(0.0 if holds else 1.0, 1.0 if holds else 0.0)
    fails: list[float] = []
    holds_p: list[float] = []
    if lower is not None:
        t = (est.value - lower) / est.se
        fails.append(float(special.stdtr(est.df, -t)))
        holds_p.append(float(special.stdtr(est.df, t)))
    if upper is not None:
        t = (est.value - upper) / est.se
        fails.append(float(special.stdtr(est.df, t)))
        holds_p.append(float(special.stdtr(est.df, -t)))
    return OneSided(max(fails), min(holds_p))


def interval(est: Estimate, alpha: float, within: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """One-sided (1 - alpha) lower and upper confidence bounds, i.e. the central
    (1 - 2 alpha) interval; degenerate at the estimate when there is no spread.

    ``within``: the values the quantity can take (``quantity_range``); the bounds are cut
    to it. The true value lies in that range, so cutting keeps the coverage and spares
    the reader an accuracy difference of -1.23.
    """
    if est.se == 0.0:
        return est.value, est.value
    half = float(special.stdtrit(est.df, 1.0 - alpha)) * est.se
    low, high = within
    return max(est.value - half, low), min(est.value + half, high)


#: Metrics bounded by their definition, by name without a ``test_``/``val_`` prefix.
BOUNDED_METRICS = {
    "accuracy": (0.0, 1.0),
    "f1": (0.0, 1.0),
    "mcc": (-1.0, 1.0),
    "exact_match": (0.0, 1.0),
    "perplexity": (1.0, math.inf),
}
#: ... and those that cannot be negative.
NONNEGATIVE_PREFIXES = (
    "flops_ratio",
    "trainable_params",
    "head_params",
    "adapter_flops",
    "loss",
    "peak_",
    "train_time",
    "eval_time",
    "active_",
    "total_rank",
    "kept_",
)


def metric_range(metric: str) -> tuple[float, float]:
    """The values a metric can take by definition; (-inf, inf) when not known."""
    name = metric.removeprefix("test_").removeprefix("val_")
    if name in BOUNDED_METRICS:
        return BOUNDED_METRICS[name]
    if name.endswith("_fraction"):  # kept_fraction, active_fraction, ...: shares of a whole
        return 0.0, 1.0
    if name.startswith(NONNEGATIVE_PREFIXES):
        return 0.0, math.inf
    return -math.inf, math.inf


def quantity_range(claim: Claim) -> tuple[float, float]:
    """The values the claim's quantity ``V`` can take, from its metrics' ranges:
    ``a.test_accuracy - b.test_accuracy`` lies in [-1, 1]."""
    low = high = 0.0
    for ref, coefficient in claim.expr.coefficients.items():
        ends = [coefficient * end for end in metric_range(ref.metric)]
        low, high = low + min(ends), high + max(ends)
    return low, high


@dataclass(frozen=True)
class Holm:
    """Holm step-down over one family: per hypothesis, whether it is rejected, the
    level it was compared with (alpha / (m - rank + 1)) and its adjusted p-value."""

    rejected: list[bool]
    levels: list[float]
    adjusted: list[float]


def holm(p_values: list[float], alpha: float) -> Holm:
    """Holm (1979): sort p ascending, reject while p_(k) <= alpha / (m - k + 1).

    Example:
        >>> holm([0.01, 0.04, 0.03], 0.05).rejected
        [True, False, False]
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (p_values[i], i))
    rejected = [False] * m
    levels = [alpha] * m
    adjusted = [1.0] * m
    running, still_rejecting = 0.0, True
    for rank, i in enumerate(order):
        levels[i] = alpha / (m - rank)
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
        still_rejecting = still_rejecting and p_values[i] <= levels[i]
        rejected[i] = still_rejecting
    return Holm(rejected, levels, adjusted)
