"""Sequential confirmation: judge after every round of seeds, add seeds only where needed.

``confirm: {seeds: 3, max_seeds: 9}`` plans looks after 3, 6 and 9 seeds per arm
(``look_sizes``). After each round the claims still INCONCLUSIVE are judged again,
and only the arms they name get the next round (``arms_needing_seeds``), so a clear
result costs 3 seeds and a close one up to 9.

Looking repeatedly at accumulating data and stopping when a test passes inflates its
error rate (Armitage et al. 1969), so each look spends only part of alpha. The spending
function is Lan & DeMets' (Biometrika 1983) Pocock type, ``alpha(t) = alpha * ln(1 + (e -
1) t)`` at information fraction ``t = seeds so far / max_seeds``: it spends more early
than O'Brien-Fleming's (which is the right shape for a confirmation that should stop
as soon as the answer is clear). Look k tests at ``alpha(t_k) - alpha(t_{k-1})``; by the
union bound, P(a false SUPPORTED at any look) <= sum of the shares = alpha, for any
dependence between looks, and likewise for REFUTED. Within a look, Holm runs over the
claims still open, as ``judge_claims`` does over all of them.

Why the union bound and not exact group-sequential boundaries: exact boundaries need
the joint normal law of the test statistics across looks; here they are t statistics
from 2-12 seeds with an added test-example component (``judge.examples``), whose joint
law has no closed form, and a boundary computed for the normal case would not hold at
these sizes. The union bound is conservative (3 looks at alpha 0.05 test at 0.0226, 0.0155
and 0.0118, which sum to 0.05 whatever the correlation between looks) and holds for
all of them;
``tests/test_judge_sequential.py`` measures the rates. Written by hand: no maintained
Python package implements alpha-spending for arbitrary test statistics (``rpact``,
``gsDesign`` are R).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from orchestrator.claims import Claim, parse_claim
from orchestrator.judge.examples import PerExample
from orchestrator.judge.verdicts import Verdict, judge_claims


def look_sizes(seeds: int, max_seeds: int | None) -> list[int]:
    """Seeds per arm at each planned look: rounds of ``seeds`` up to ``max_seeds``.

    >>> look_sizes(3, 9), look_sizes(3, 8), look_sizes(2, None)
    ([3, 6, 9], [3, 6, 8], [2])
    """
    cap = seeds if max_seeds is None else max(max_seeds, seeds)
    sizes = list(range(seeds, cap + 1, seeds))
    if sizes[-1] != cap:
        sizes.append(cap)
    return sizes


def spent(alpha: float, fraction: float) -> float:
    """Lan-DeMets Pocock-type spending: the alpha spent by information fraction ``fraction``.

    >>> round(spent(0.05, 1.0), 12), round(spent(0.05, 0.5), 4)
    (0.05, 0.031)
    """
    fraction = min(max(fraction, 0.0), 1.0)
    return alpha * math.log1p((math.e - 1.0) * fraction)


def look_alpha(alpha: float, look: int, sizes: Sequence[int]) -> float:
    """The share of ``alpha`` that look ``look`` (1-based) of ``sizes`` may spend.

    >>> [round(look_alpha(0.05, k, [3, 6, 9]), 4) for k in (1, 2, 3)]
    [0.0226, 0.0155, 0.0118]
    """
    if not 1 <= look <= len(sizes):
        raise ValueError(f"look {look} is not one of the {len(sizes)} planned looks")
    total = sizes[-1]
    before = spent(alpha, sizes[look - 2] / total) if look > 1 else 0.0
    return spent(alpha, sizes[look - 1] / total) - before


def judge_look(
    claims: Sequence[Claim | str],
    samples: Mapping,
    *,
    look: int,
    sizes: Sequence[int],
    previous: Sequence[Verdict] | None = None,
    confidence: float = 0.95,
    family_wise: bool | None = None,
    exact_metrics: Mapping[str, Iterable[str]] | None = None,
    failed: Mapping | None = None,
    per_example: PerExample | None = None,
) -> list[Verdict]:
    """Every claim's verdict at look ``look``, given ``previous``, the verdicts of the look
    before: a claim that went on (INCONCLUSIVE, and more seeds could settle it, so
    ``arms_needing_seeds`` gave all of its arms this round) is judged on the data so far
    at this look's share of alpha; every other claim keeps its earlier verdict.

    So each claim is judged at looks 1..K of its own, and at look k its arms have exactly
    ``sizes[k - 1]`` seeds: the sample size of every test is fixed in advance, which is
    what the union bound over looks needs. (Judging a claim whose arms got no new seeds
    again would retest old data, under a Holm family that may have shrunk.)

    With one planned look this is ``judge_claims`` exactly.
    """
    parsed = [c if isinstance(c, Claim) else parse_claim(c) for c in claims]
    if previous is not None and len(previous) != len(parsed):
        raise ValueError(f"{len(previous)} earlier verdicts for {len(parsed)} claims")
    open_claims = [i for i in range(len(parsed)) if previous is None or _goes_on(previous[i])]
    use_holm = len(parsed) >= 2 if family_wise is None else family_wise
    judged = (
        judge_claims(
            [parsed[i] for i in open_claims],
            samples,
            confidence=confidence,
            family_wise=use_holm,
            exact_metrics=exact_metrics,
            failed=failed,
            per_example=per_example,
            alpha=look_alpha(1.0 - confidence, look, sizes),
            look=look,
        )
        if open_claims
        else []
    )
    fresh = dict(zip(open_claims, judged, strict=True))
    earlier = list(previous) if previous is not None else []  # no earlier look: every claim is open
    return [fresh[i] if i in fresh else earlier[i] for i in range(len(parsed))]


def arms_needing_seeds(claims: Sequence[Claim | str], verdicts: Sequence[Verdict]) -> list[str]:
    """Arms named by a claim that is still INCONCLUSIVE and that more seeds could settle.

    Not: a claim blocked by a failed, missing or non-finite seed (more seeds would judge
    the survivors: fix the cause instead), one naming a metric no run reports, and one
    whose settling budget says seeds alone cannot settle it (the test set is too small).
    """
    parsed = [c if isinstance(c, Claim) else parse_claim(c) for c in claims]
    arms: list[str] = []
    for claim, verdict in zip(parsed, verdicts, strict=True):
        if _goes_on(verdict):
            arms.extend(arm for arm in claim.arms() if arm not in arms)
    return arms


def _goes_on(verdict: Verdict) -> bool:
    """The claim is INCONCLUSIVE and more seeds could settle it."""
    if verdict.verdict != "INCONCLUSIVE":
        return False
    if verdict.interval_method == "none":  # no interval: fine only when the spread is what is missing
        evidence = verdict.evidence.values()
        return bool(evidence) and all(e.n > 0 and not e.excluded for e in evidence)
    return verdict.seeds_to_settle is not None
