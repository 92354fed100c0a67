"""RunSummary (+ figures) -> the report's blocks, section by section.

Every number says where it comes from: the search sees only the validation split, the
confirmation runs (each arm's best configuration on fresh seeds) the held-out split, and
every claim is judged on the confirmation runs alone.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.report.numbers import fmt, mean_and_half_width, pct
from orchestrator.report.render import Alert, Block, Bullets, Heading, Image, Para, Table

if TYPE_CHECKING:
    from orchestrator.judge import Verdict
    from orchestrator.report.collect import ArmSummary, RunRecord, RunSummary
    from orchestrator.report.diagnostics import ArmDiagnostics
    from orchestrator.report.plots import Plot

FLOP_BASIS = (
    "`flops_ratio` is the adapter's extra FLOPs per token relative to an **UNMERGED LoRA r=8** on the same "
    "modules (measured with FlopCounterMode, adapted minus base model). A merged LoRA adds 0 FLOPs, so a "
    "routed method's saving is a saving against unmerged serving only."
)
POSTHOC_ALERT = (
    "POST-HOC: the verdicts under 'Post-hoc verdicts' judge claims that differ from the ones registered "
    "before the run; they were chosen after the data were seen, so their error rates are NOT controlled. "
    "Only the pre-registered verdicts test the hypothesis."
)


@dataclass(frozen=True)
class RunImage:
    """A PNG an arm, trial or confirmation run logged, copied next to the report."""

    arm: str
    run_id: str
    where: str  # "arm run", "confirm run seed 1000", "trial run small #3 ..."
    artifact: str
    path: Path  # relative to the report folder


def build_blocks(
    summary: RunSummary,
    plots: list[Plot],
    folder: Path,
    images: list[RunImage],
    left_out: list[str],
    diagnostics: list[ArmDiagnostics] | None = None,
) -> list[Block]:
    blocks: list[Block] = [Heading(f"Hypothesis report: {summary.hypothesis}", 1)]
    if summary.posthoc:
        blocks.append(Alert(POSTHOC_ALERT))
    if summary.status != "FINISHED":
        blocks.append(Alert(f"This hypothesis run is {summary.status}, not FINISHED: numbers may be incomplete."))
    blocks += identity(summary)
    blocks += provenance(summary)
    blocks += verdict_section(summary, summary.verdicts, "Verdicts (pre-registered claims)")
    blocks += looks_section(summary)
    blocks += arm_section(summary)
    blocks += figures(plots, folder)
    if diagnostics is not None:
        blocks += diagnostics_section(diagnostics, folder)
    blocks += run_images(images, left_out)
    if summary.posthoc:
        blocks += [Heading("Post-hoc verdicts"), Alert(POSTHOC_ALERT)]
        p = summary.posthoc
        blocks.append(
            Bullets(
                [
                    f"judged {p.judged_at} from `{p.spec_file}`",
                    "registered claims: " + "; ".join(f"`{c}`" for c in p.registered_claims),
                    "post-hoc claims: " + "; ".join(f"`{c}`" for c in p.claims),
                ]
            )
        )
        blocks += verdict_section(summary, p.verdicts, None, level=3)
    return blocks


def identity(summary: RunSummary) -> list[Block]:
    plan = summary.plan
    task, confirm, training = plan.get("task", {}), plan.get("confirm", {}), plan.get("training", {})
    first = (plan.get("arms") or [{}])[0]
    constraints = sorted({c for arm in plan.get("arms", []) for c in arm.get("constraints", [])})
    rows = [
        ["source", summary.source or "-"],
        ["spec", f"`{summary.spec_file}`, sha256 `{summary.spec_sha256}`"],
        ["profile", summary.profile],
        ["hypothesis run", f"`{summary.run_id}` ({summary.status}), experiment `{summary.experiment_id}`"],
        ["MLflow", f"`{_without_credentials(summary.tracking_uri)}`"],
        ["git commit", f"`{summary.git_commit}`"],
        [
            "task",
            f"{task.get('model', '-')} on {task.get('dataset', '-')} "
            f"(max_length {task.get('max_length', '-')}, metric {summary.metric})",
        ],
        [
            "training",
            f"{training.get('epochs', '-')} epochs, batch {training.get('batch_size', '-')}, "
            f"lr {training.get('lr', '-')} (unless searched)",
        ],
        [
            "search",
            f"{first.get('sampler', {}).get('name', '-')} sampler, {first.get('trials', '-')} trials per arm, "
            f"objectives {', '.join(f'{k} {v}' for k, v in summary.objectives().items())}, "
            f"scheduler {first.get('scheduler', '-')}, "
            f"constraints {', '.join(constraints) or 'none'}",
        ],
        [
            "confirmation",
            f"best configuration of each arm x {confirm.get('seeds', '-')} fresh seeds "
            f"(from {confirm.get('first_seed', '-')}) on the {summary.confirm_split} split"
            + (
                f", then rounds of {confirm.get('seeds')} more for the arms of open claims, "
                f"up to {confirm['max_seeds']} per arm"
                if len(summary.confirm_rounds) > 1
                else ""
            ),
        ],
        ["judge", f"confidence {summary.confidence:g}; " + _holm_words(summary.family_wise, len(summary.claims))],
    ]
    return [Para(f"**Statement.** {summary.statement}"), Table(["item", "value"], rows)]


def _without_credentials(uri: str) -> str:
    """``scheme://user:password@host/...`` -> ``scheme://host/...``: a report is shared."""
    return re.sub(r"^([A-Za-z][\w+.-]*://)[^/@]*@", r"\1", uri)


def provenance(summary: RunSummary) -> list[Block]:
    split = summary.confirm_split
    level = pct(summary.confidence)
    return [
        Heading("Where each number comes from"),
        Bullets(
            [
                f"**search = validation split**: every trial's `val_{summary.metric}` (and `val_loss`) is measured "
                "on the validation split; it chose each arm's best configuration and feeds the Pareto and history "
                "figures.",
                f"**confirmation = {split} split**: each arm's best configuration retrained on fresh seeds and "
                f"evaluated on the {split} split (`test_{summary.metric}`, `test_loss`). Every claim and the arm "
                "table's confirmation columns use these runs only.",
                f"**intervals**: a claim's interval [low, high] is the pair of one-sided {level} bounds (each bound "
                f"holds at that level; together a central {pct(2 * summary.confidence - 1)} interval), t over seeds "
                "plus, for test accuracy and loss, the sampling variance of the test examples (every arm is scored on "
                "the same examples, so arms are paired by example; method '+ test examples'), cut to the values the "
                "quantity can take; with Holm (and, with rounds of seeds, each look's share of alpha) the level of a "
                "claim is raised to the one it was tested at (shown per claim). "
                "The arm table's mean ± half-width is over seeds only.",
                "**complete evidence only**: a claim is INCONCLUSIVE when a confirmation seed of one of its arms "
                "failed or gave a missing or non-finite value (its detail names the seed and the error), and when "
                "every seed gave the same value of a metric that varies with the seed and has no per-example record: "
                "only metrics the method fixes by configuration (`trainable_params`, a static adapter's "
                "`flops_ratio`, ...) are compared exactly.",
                FLOP_BASIS,
            ]
        ),
    ]


# -- verdicts -------------------------------------------------------------------------------
def verdict_section(summary: RunSummary, verdicts: list[Verdict], title: str | None, level: int = 2) -> list[Block]:
    blocks: list[Block] = [Heading(title, level)] if title else []
    if not verdicts:
        return blocks + [Para("No claims were registered (`expected:` is empty), so nothing was judged.")]
    rows = [
        [
            str(i + 1),
            f"`{v.claim}`",
            v.verdict,
            fmt(v.estimate),
            _interval(v),
            pct(v.confidence),
            v.interval_method,
            _p(v),
        ]
        for i, v in enumerate(verdicts)
    ]
    blocks.append(
        Table(
            ["#", "claim", "verdict", "estimate", "interval [low, high]", "level", "method", "adjusted p"],
            rows,
            {3, 4, 5, 7},
        )
    )
    for i, verdict in enumerate(verdicts):
        blocks += claim_detail(summary, i + 1, verdict, level + 1)
    return blocks


def claim_detail(summary: RunSummary, number: int, v: Verdict, level: int) -> list[Block]:
    interval = (
        ("none: " + v.reason)
        if v.ci_low is None
        else (
            f"[{fmt(v.ci_low)}, {fmt(v.ci_high)}], the one-sided {pct(v.confidence)} lower and upper bounds on "
            f"`{v.quantity}` (together a central {pct(2 * v.confidence - 1)} interval)"
        )
    )
    settle = _settle(v)
    if v.holm:
        holm = (
            f"Holm's step-down over {v.family_size} claims at α = {1 - summary.confidence:.3g}; this claim was "
            f"tested at level {pct(v.confidence)}"
        )
    else:
        why_not = "one claim" if v.family_size < 2 else "family_wise: false"
        holm = f"not applied ({why_not}); tested at {pct(v.confidence)}"
    items = [
        f"**verdict**: {v.verdict}. {v.reason}",
        f"**quantity**: `{v.quantity}`; the claim holds where {_region(v)} (normal form `{v.canonical}`)",
        f"**estimate**: {fmt(v.estimate)} (mean over seeds; sd {fmt(v.sd)}, df {fmt(v.df)}, seeds per arm "
        + (", ".join(f"{arm}={k}" for arm, k in v.n.items()) or "-")
        + ")",
        f"**interval**: {interval}",
        f"**method**: {v.interval_method}" + _components(v),
        f"**effect size**: estimate − nearest boundary ({fmt(v.boundary)}) = {fmt(v.effect_size)}"
        + ("" if v.effect_d is None else f"; standardised d = {v.effect_d:.2f}"),
        f"**what would settle it**: {settle}",
        f"**p-values** (one-sided): p(claim fails) = {fmt(v.p_fails)}, p(claim holds) = {fmt(v.p_holds)}; "
        f"Holm-adjusted: {fmt(v.p_fails_adjusted)} and {fmt(v.p_holds_adjusted)}",
        f"**Holm**: {holm}",
    ]
    evidence = [
        [
            f"`{ref}`",
            fmt(e.mean),
            fmt(e.sd),
            str(e.n),
            ", ".join(f"{seed}: {fmt(value)}" for seed, value in e.values.items()) or "-",
            ", ".join(f"{seed}: {why}" for seed, why in e.excluded.items()) or "-",
        ]
        for ref, e in v.evidence.items()
    ]
    runs = []
    for arm in dict.fromkeys(ref.split(".")[0] for ref in v.evidence):
        try:
            confirms = summary.arm(arm).confirms
        except StopIteration:
            runs.append(f"{arm}: no such arm in this run")
            continue
        runs.append(f"{arm}: " + (", ".join(f"seed {c.seed} `{c.run_id}`" + _failure(c) for c in confirms) or "none"))
    return [
        Heading(f"Claim {number}: `{v.claim}` — {v.verdict}", level),
        Bullets(items),
        Table(["arm.metric", "mean", "sd", "n", "values by seed", "excluded"], evidence, {1, 2, 3}),
        Para("Confirmation runs (MLflow run ids): " + "; ".join(runs)),
    ]


def _settle(v: Verdict) -> str:
    """What would settle an INCONCLUSIVE claim (``judge.settle``), as its reason says."""
    if v.verdict != "INCONCLUSIVE":
        return f"settled at look {v.look}"
    if v.seeds_to_settle:
        return f"about {v.seeds_to_settle} seeds per arm (80% power if the truth were the estimate)"
    if v.examples_to_settle:
        return (
            f"not more seeds: the test set's own sampling error is too large for the margin; about "
            f"{v.examples_to_settle} test examples would"
        )
    return (
        "cannot say: no interval, no spread, the estimate on the boundary, or a margin finer than the metric resolves"
    )


def _components(v: Verdict) -> str:
    """'; standard error from seeds 0.012 and from 961 test examples 0.009'."""
    if not v.examples or v.se_seeds is None or v.se_examples is None:
        return ""
    return f"; standard error from seeds {fmt(v.se_seeds)} and from {v.examples} test examples {fmt(v.se_examples)}"


def _failure(run: RunRecord) -> str:
    """' (FAILED: why)' for a failed confirmation run: any failed seed of a claim's arms
    leaves the claim INCONCLUSIVE, so the reader sees which run and why."""
    if run.status != "FAILED":
        return ""
    from orchestrator.judge.stats import short_error

    return f" (FAILED: {short_error(run.error)})"


def _region(v: Verdict) -> str:
    from orchestrator.claims import parse_claim

    try:
        claim = parse_claim(v.claim)
        lower_strict, upper_strict = claim.lower_strict, claim.upper_strict
    except ValueError:
        lower_strict = upper_strict = False
    if v.lower is not None and v.upper is not None:
        return f"it lies in [{fmt(v.lower)}, {fmt(v.upper)}]"
    if v.lower is not None:
        return f"it is {'above' if lower_strict else 'at or above'} {fmt(v.lower)}"
    return f"it is {'below' if upper_strict else 'at or below'} {fmt(v.upper)}"


def _interval(v: Verdict) -> str:
    return "-" if v.ci_low is None else f"[{fmt(v.ci_low)}, {fmt(v.ci_high)}]"


def _p(v: Verdict) -> str:
    p = v.p_holds_adjusted if v.verdict == "REFUTED" else v.p_fails_adjusted
    return fmt(p)


def _holm_words(family_wise: bool | None, claims: int) -> str:
    if family_wise is False or (family_wise is None and claims < 2):
        return "no multiplicity correction" + (" (one claim)" if claims < 2 else "")
    return f"Holm's step-down across the {claims} claims"


# -- looks of a sequential confirmation -----------------------------------------------------
def looks_section(summary: RunSummary) -> list[Block]:
    """One row per look: the seeds the judge saw, the share of alpha it spent, the claims
    it settled and the arms it sent on. Only for a confirmation planned in rounds (with
    one round the verdicts above are the one look)."""
    rounds = summary.confirm_rounds
    if len(rounds) < 2:
        return []
    sizes = [sum(len(r) for r in rounds[: k + 1]) for k in range(len(rounds))]
    alpha = 1 - summary.confidence
    intro = Para(
        f"Confirmation ran in rounds (planned looks after {', '.join(map(str, sizes))} seeds per arm). "
        f"At each look the claims still open were judged at that look's share of α = {alpha:.3g} "
        "(Lan-DeMets Pocock-type spending; the shares sum to α, so looking repeatedly keeps each error rate "
        "within α), a claim settled at a look kept its verdict, and only the arms of open claims that more seeds "
        "could settle went on to the next round's seeds."
    )
    if not summary.looks:
        return [
            Heading("Looks"),
            intro,
            Para("No look was recorded (`looks.json` is missing): the run stopped before its first look."),
        ]
    rows = [
        [
            str(look.index),
            ", ".join(f"{arm}={len(seeds)}" for arm, seeds in look.seeds.items()) or "-",
            fmt(look.alpha, 3),
            "; ".join(f"#{number} `{v.claim}`: {v.verdict}" for number, v in look.settled_here()) or "none",
            ", ".join(look.continuing) or ("none (max_seeds reached)" if look.index == len(rounds) else "none"),
        ]
        for look in summary.looks
    ]
    header = ["look", "seeds per arm", "α spent at this look", "claims settled at this look", "arms that went on"]
    return [Heading("Looks"), intro, Table(header, rows, {2})]


# -- arms -----------------------------------------------------------------------------------
def arm_section(summary: RunSummary) -> list[Block]:
    metric, split, level = summary.metric, summary.confirm_split, pct(summary.confidence)
    header = [
        "arm",
        "method",
        "best configuration",
        f"best val_{metric} (search, validation)",
        f"test_{metric} mean ± half-width ({split}, confirmation)",
        "flops_ratio",
        "trainable params",
        "peak memory MB",
        "precision",
        "trials completed / failed / stopped early / infeasible",
    ]
    rows = []
    for arm in summary.arms:
        best = arm.best_trial()
        confirms = arm.usable_confirms()
        counts = arm.counts
        rows.append(
            [
                arm.arm,
                arm.method,
                _config(arm) or "-",
                fmt(best.metrics.get(f"val_{metric}")) if best else "-",
                _mean_pm(confirms, f"test_{metric}", summary.confidence),
                _mean_pm(confirms, "flops_ratio", summary.confidence, plain=True),
                _mean_pm(confirms, "trainable_params", summary.confidence, plain=True),
                fmt(max((c.metrics["peak_rss_mb"] for c in confirms if "peak_rss_mb" in c.metrics), default=None)),
                _precisions(confirms),
                f"{counts['COMPLETED']} / {counts['FAILED']} / {counts['STOPPED']} / {counts['INFEASIBLE']}",
            ]
        )
    selected_by = ", ".join(sorted({a.best_reason for a in summary.arms if a.best_reason})) or "-"
    notes = Bullets(
        [
            f"best configuration and best val_{metric}: the trial the search selected ({selected_by}).",
            f"test_{metric}: mean over the confirmation seeds ± the half-width of the one-sided {level} t bounds "
            "(n seeds in brackets).",
            "flops_ratio and trainable params: mean over the confirmation runs (they rarely vary with the seed); "
            "peak memory: the largest peak resident memory of one confirmation run.",
            "precision: what the confirmation runs trained and evaluated in (`training.precision`; 'emulated' where "
            "the CPU ran bf16 without hardware support).",
            "best trial runs: " + "; ".join(f"{a.arm} `{a.best_run_id or '-'}`" for a in summary.arms),
        ]
    )
    return [Heading("Arms"), Table(header, rows, {3, 4, 5, 6, 7}), notes]


def _precisions(confirms: list[RunRecord]) -> str:
    """The distinct precisions the runs used: two values in one arm mean its seeds ran
    on different hardware (a confound worth seeing)."""
    used = sorted(
        {
            c.params["precision"] + ("" if c.params.get("precision_native", "true") == "true" else " (emulated)")
            for c in confirms
            if "precision" in c.params
        }
    )
    return ", ".join(used) or "-"


def _config(arm: ArmSummary) -> str:
    shown = {**arm.best_params}
    return ", ".join(f"{k}={_short(v)}" + (" (fixed)" if k in arm.fixed else "") for k, v in shown.items())


def _short(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    return fmt(value)


def _mean_pm(confirms: list[RunRecord], metric: str, confidence: float, plain: bool = False) -> str:
    values = [float(c.metrics[metric]) for c in confirms if metric in c.metrics and math.isfinite(c.metrics[metric])]
    if not values:
        return "-"
    mean, half = mean_and_half_width(values, confidence)
    if plain and (half is None or half == 0):
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt(half)} (n={len(values)})" if half is not None else f"{fmt(mean)} (n=1)"


# -- figures --------------------------------------------------------------------------------
def figures(plots: list[Plot], folder: Path) -> list[Block]:
    blocks: list[Block] = [Heading("Figures")]
    if not plots:
        return blocks + [Para("No figure: no trial reported the metrics they need.")]
    for plot in plots:
        blocks += [Heading(plot.title, 3), Image(plot.path.relative_to(folder), plot.title, plot.caption)]
    return blocks


# -- search diagnostics ---------------------------------------------------------------------
def diagnostics_section(diagnostics: list[ArmDiagnostics], folder: Path) -> list[Block]:
    """Per arm: the importance table and the slice, contour and parallel-coordinate
    figures (``report.diagnostics``), or the one line that says why there are none."""
    from orchestrator.report.diagnostics import EVALUATOR, MIN_COMPLETED

    blocks: list[Block] = [
        Heading("Search diagnostics"),
        Para(
            "How each arm's primary objective (validation split) moved with its searched hyperparameters. "
            f"**Importance**: {EVALUATOR}, the share of the objective's variance across the arm's completed "
            "trials that each parameter explains (they sum to 1). It describes this search's few trials, not the "
            "method: with a handful of trials a small share may be noise. Failed, infeasible and early-stopped "
            f"trials do not weigh in; an arm needs {MIN_COMPLETED} completed trials and two searched parameters. "
            f"Where fewer than {MIN_COMPLETED} trials completed (ASHA stops about half of a small search after its "
            "first epoch), every trial that trained weighs in with its value at the last epoch all of them reached, "
            "and the arm's lines say so: importances of early training, which need not hold at the end. "
            "The same numbers and figures are logged on each arm's MLflow run under `diagnostics/`."
        ),
    ]
    for found in diagnostics:
        left_out = ", ".join(f"{count} {status}" for status, count in found.left_out.items())
        blocks += [
            Heading(found.arm, 3),
            Para(
                (
                    f"{found.completed} completed trials weigh in"
                    if found.epoch is None
                    else f"{found.completed} trials weigh in with their value at epoch {found.epoch} (too few "
                    "completed for their final values): early training"
                )
                + (f" (left out: {left_out})" if left_out else "")
                + f"; objective `{found.objective}` ({found.mode}); search space: {found.space_source}."
            ),
        ]
        if found.reason is not None:
            blocks.append(Para(f"No importances or figures: {found.reason}."))
            continue
        rows = [[f"`{p.name}`", fmt(p.importance, 3), str(p.rank)] for p in found.importances]
        blocks.append(Table(["parameter", "importance", "rank"], rows, {1, 2}))
        blocks += [Image(plot.path.relative_to(folder), plot.title, plot.caption) for plot in found.plots]
    return blocks


def run_images(images: list[RunImage], left_out: list[str]) -> list[Block]:
    if not images and not left_out:
        return []
    blocks: list[Block] = [
        Heading("Method artifacts"),
        Para(
            "Figures logged by the runs themselves: per arm, the arm run's (e.g. a multi-objective Pareto front), "
            "then the methods' own (heatmaps...) from the confirmation runs, the selected trial and the other trials."
        ),
    ]
    for image in images:
        blocks.append(
            Image(
                image.path,
                f"{image.arm}: {image.artifact}",
                f"{image.arm}, {image.where} (`{image.run_id}`): `{image.artifact}`",
            )
        )
    if left_out:
        blocks.append(
            Para(
                f"{len(left_out)} more PNG artifacts are not embedded (size cap); find them in MLflow: "
                + "; ".join(f"`{x}`" for x in left_out[:30])
                + (" ..." if len(left_out) > 30 else "")
            )
        )
    return blocks
