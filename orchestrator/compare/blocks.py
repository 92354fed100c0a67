"""A ``Comparison`` as the blocks of a page, rendered like a report (``report.render``).

Sections: the two runs and how they relate, the spec diff, the claims (a changed one
marked **post hoc**), the verdicts (those that flipped first, then every claim's), and
each shared arm's numbers with B - A.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from orchestrator.compare.claims import ClaimChangeKind
from orchestrator.report.numbers import fmt, pct
from orchestrator.report.render import Alert, Block, Bullets, Diff, Heading, Para, Table

if TYPE_CHECKING:
    from orchestrator.compare.comparison import ArmPair, Comparison, Estimate, RunSide, VerdictPair
    from orchestrator.judge import Verdict

POSTHOC = "**post hoc**"
POSTHOC_ALERT = (
    "POST HOC: {n} of B's claims reword a claim of A (same metrics, another bound): they were written after "
    "A's data existed, so their verdicts' error rates are NOT controlled."
)
CHANGE_WORDS = {
    ClaimChangeKind.SAME: "same",
    ClaimChangeKind.CHANGED: f"changed: {POSTHOC}",
    ClaimChangeKind.ADDED: "added in B",
    ClaimChangeKind.REMOVED: "removed in B",
}


def comparison_blocks(comparison: Comparison) -> list[Block]:
    a, b = comparison.a, comparison.b
    blocks: list[Block] = [Heading(f"Comparison: {a.label} -> {b.label}", 1)]
    posthoc = sum(1 for change in comparison.claims if change.posthoc)
    if posthoc:
        blocks.append(Alert(POSTHOC_ALERT.format(n=posthoc)))
    blocks += _runs(comparison)
    blocks += _spec(comparison)
    blocks += _claims(comparison)
    blocks += _verdicts(comparison)
    blocks += _arms(comparison)
    return blocks


def _runs(comparison: Comparison) -> list[Block]:
    header = ["", "hypothesis", "run id", "profile", "status", "started", "spec file", "refines"]
    rows = [[name, *_run_cells(side)] for name, side in (("A", comparison.a), ("B", comparison.b))]
    blocks: list[Block] = [Table(header, rows)]
    if comparison.lineage:
        blocks.append(Para(f"Lineage: {comparison.lineage}."))
    return blocks


def _run_cells(side: RunSide) -> list[str]:
    summary = side.summary
    started = dt.datetime.fromtimestamp(side.start_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
    return [
        summary.hypothesis,
        f"`{summary.run_id}`",
        summary.profile,
        summary.status,
        started,
        f"`{summary.spec_file}`" if summary.spec_file else "-",
        side.refines or "-",
    ]


def _spec(comparison: Comparison) -> list[Block]:
    blocks: list[Block] = [Heading("Spec diff")]
    if not comparison.a.spec_text and not comparison.b.spec_text:
        return blocks + [Para("Neither run logged its spec or its plan.")]
    if not comparison.spec_diff:
        return blocks + [Para("The two runs ran the same spec text.")]
    return blocks + [Diff(comparison.spec_diff)]


def _claims(comparison: Comparison) -> list[Block]:
    rows = [
        [CHANGE_WORDS[change.kind], _code(change.before), _code(change.after)]
        for change in comparison.claims
        if change.kind != ClaimChangeKind.SAME
    ]
    same = sum(1 for change in comparison.claims if change.kind == ClaimChangeKind.SAME)
    blocks: list[Block] = [Heading("Claims"), Para(f"{same} claim{'' if same == 1 else 's'} the same in both.")]
    if rows:
        blocks.append(Table(["change", "claim in A", "claim in B"], rows))
    return blocks


def _verdicts(comparison: Comparison) -> list[Block]:
    flipped = comparison.flipped
    judged = sum(1 for pair in comparison.verdicts if pair.verdict_a and pair.verdict_b)
    blocks: list[Block] = [
        Heading("Verdicts"),
        Para(f"{len(flipped)} of the {judged} claims judged in both runs flipped."),
    ]
    if flipped:
        blocks.append(Bullets([_flip_line(pair) for pair in flipped]))
    header = ["claim", "A verdict", "A estimate [interval]", "B verdict", "B estimate [interval]", "change"]
    rows = [
        [
            _code(pair.claim),
            _verdict_word(pair.verdict_a),
            _numbers(pair.verdict_a),
            _verdict_word(pair.verdict_b),
            _numbers(pair.verdict_b),
            _pair_change(pair),
        ]
        for pair in comparison.verdicts
    ]
    if rows:
        blocks.append(Table(header, rows, {2, 4}))
    return blocks


def _flip_line(pair: VerdictPair) -> str:
    a, b = pair.verdict_a, pair.verdict_b
    assert a is not None and b is not None  # flipped: both judged
    line = f"{_code(pair.claim)}: {a.verdict} -> {b.verdict} (estimate {_numbers(a)} -> {_numbers(b)})"
    return line + (f", {POSTHOC}: A judged `{pair.change.before}`" if pair.change.posthoc else "")


def _verdict_word(verdict: Verdict | None) -> str:
    return "-" if verdict is None else verdict.verdict


def _numbers(verdict: Verdict | None) -> str:
    if verdict is None:
        return "-"
    row = verdict.to_row()
    return f"{row['estimate']} {row['bounds']}" if row["bounds"] != "-" else row["estimate"]


def _pair_change(pair: VerdictPair) -> str:
    if pair.flipped:
        return "flipped" + (f", {POSTHOC}" if pair.change.posthoc else "")
    if pair.change.kind == ClaimChangeKind.SAME and not (pair.verdict_a and pair.verdict_b):
        return "not judged in both"
    return CHANGE_WORDS[pair.change.kind]


def _arms(comparison: Comparison) -> list[Block]:
    level = pct(comparison.b.summary.confidence)
    blocks: list[Block] = [Heading("Arms")]
    rows = [row for arm in comparison.arms for row in _arm_rows(arm)]
    if rows:
        blocks.append(Table(["arm", "metric", "A", "B", "B - A"], rows, {2, 3, 4}))
        blocks.append(
            Para(
                f"Means over each arm's confirmation seeds ± the half-width of the one-sided {level} t bounds "
                "(n seeds); B - A compares the means."
            )
        )
    else:
        blocks.append(Para("The two runs share no arm."))
    only = [f"only in A: {', '.join(comparison.only_a)}"] if comparison.only_a else []
    only += [f"only in B: {', '.join(comparison.only_b)}"] if comparison.only_b else []
    if only:
        blocks.append(Bullets(only))
    return blocks


def _arm_rows(arm: ArmPair) -> list[list[str]]:
    name = arm.arm if arm.method_a == arm.method_b else f"{arm.arm} ({arm.method_a} -> {arm.method_b})"
    return [
        [name, metric.metric, _estimate(metric.a), _estimate(metric.b), _signed(metric.difference)]
        for metric in arm.metrics
    ]


def _estimate(estimate: Estimate | None) -> str:
    if estimate is None:
        return "-"
    if not estimate.half_width:  # one seed, or a number the seed does not move (FLOPs, parameters)
        return fmt(estimate.mean) + ("" if estimate.half_width == 0 else f" (n={estimate.n})")
    return f"{fmt(estimate.mean)} ± {fmt(estimate.half_width)} (n={estimate.n})"


def _signed(value: float | None) -> str:
    if value is None:
        return "-"
    return ("+" if value > 0 else "") + fmt(value)


def _code(text: str | None) -> str:
    return "-" if text is None else f"`{text}`"
