"""Search diagnostics per arm: which hyperparameters mattered, and how the objective
moved with them (an arm's search trials -> importances + three PNG figures).

    >>> table = search_table(summary.arms[0], arm_plan(summary, summary.arms[0].arm))   # doctest: +SKIP
    >>> found = diagnose(table, Path("reports/x/diagnostics/lora_r4"))                  # doctest: +SKIP
    >>> [(p.name, p.rank) for p in found.importances]                                   # doctest: +SKIP
    [('lr', 1), ('lora_dropout', 2), ...]

What Optuna does: given a study, ``optuna.importance.FanovaImportanceEvaluator``
fits a random forest to (parameters -> objective) over the completed trials and
splits the objective's variance among the parameters (fANOVA, Hutter et al. 2014);
``optuna.visualization.matplotlib`` draws the slice, contour and parallel-coordinate
figures of a study.

What we add: the study. A run's trials live in MLflow, not in an Optuna storage, so
we rebuild each arm's study in memory: the distributions come from the plan logged
with the run (``plan.json``: the arm's space minus its fixed values; inferred from the
logged values only for a plan without a space), a trial's parameters from its MLflow
params, its value from the arm's primary objective (validation split). Completed
trials are COMPLETE; early-stopped ones PRUNED; failed, infeasible and interrupted
ones FAIL, so none of them weighs in, while trial numbers keep the search's order.

Early epochs. ASHA stops about half of a small search after its first epoch, so a
default profile's search of 8 trials can end with 3 completed ones: too few for a
forest. Then, when that brings more trials in, the study is built from every trained
trial's value at the last epoch all of them reached (``shared_epoch``; the value each
logged there, what ASHA itself compared), and the report says so: such importances say
what mattered early in training, which need not be what matters at the end. Mixing
stopped trials' early values with completed trials' final ones would confound the
parameters with the training length, so the two are never mixed.

fANOVA, not PED-ANOVA: PED-ANOVA compares the top 10% of trials with the rest, which
is one trial in a search of ten; fANOVA's forest uses every completed trial, so it
says something from a handful of trials on. Its forest is seeded: a report rebuilt
from the same runs gives the same numbers.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.report.plots import DPI, Plot
from orchestrator.results import COMPLETED, STOPPED

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from orchestrator.report.collect import ArmSummary, RunRecord, RunSummary

MIN_COMPLETED = 4  # fewer completed trials leave a forest of 64 trees nothing to split
FANOVA_SEED = 0
EVALUATOR = f"fANOVA (Optuna's FanovaImportanceEvaluator, 64 trees, seed {FANOVA_SEED})"
FROM_PLAN = "from the plan logged with the run (plan.json)"
INFERRED = "inferred from the logged values"


@dataclass(frozen=True)
class SearchTable:
    """One arm's search as the diagnostics read it: the searched space as Optuna
    distributions (fixed parameters left out), the primary objective, and its trials
    in start order."""

    arm: str
    objective: str
    mode: str  # "max" | "min"
    space: dict[str, BaseDistribution]
    trials: list[RunRecord]
    space_source: str = FROM_PLAN


@dataclass(frozen=True)
class ParamImportance:
    name: str
    importance: float  # share of the objective's variance (all parameters sum to 1)
    rank: int


@dataclass
class ArmDiagnostics:
    """What ``diagnose`` found for one arm: importances and figures, or why not."""

    arm: str
    objective: str
    mode: str
    space_source: str
    completed: int  # trials that weigh in (COMPLETE with a finite objective)
    left_out: dict[str, int]  # status -> trials that do not weigh in
    # None: the completed trials' final values; k: every trained trial's value at epoch k (``shared_epoch``)
    epoch: int | None = None
    importances: list[ParamImportance] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    reason: str | None = None  # why there are no importances (too few trials, one parameter...)

    def to_json(self) -> dict[str, Any]:
        """``importance.json``: logged on the arm's run next to the figures."""
        out = {k: v for k, v in asdict(self).items() if k not in ("plots", "importances")}
        out["evaluator"] = EVALUATOR
        out["importances"] = {p.name: p.importance for p in self.importances}
        out["figures"] = [plot.path.name for plot in self.plots]
        return out


# -- the trial table ------------------------------------------------------------------------
def arm_plan(summary: RunSummary, arm: str) -> dict[str, Any]:
    """The arm's entry of the logged plan (empty for a plan without it)."""
    return next((a for a in summary.plan.get("arms") or [] if a.get("arm") == arm), {})


def search_table(arm: ArmSummary, plan: Mapping[str, Any]) -> SearchTable:
    """The arm's trials with the distributions they were sampled from (``plan`` is the
    arm's entry of ``plan.json``)."""
    objectives = dict(plan.get("objectives") or {"val_accuracy": "max"})
    objective, mode = next(iter(objectives.items()))
    space = _planned_space(plan)
    if space is None:
        return SearchTable(arm.arm, objective, mode, _inferred_space(arm), arm.trials, INFERRED)
    return SearchTable(arm.arm, objective, mode, space, arm.trials)


def _planned_space(plan: Mapping[str, Any]) -> dict[str, BaseDistribution] | None:
    from orchestrator.search.space import DefineByRun, ParamSpec

    if "params" not in plan:
        return None
    params = {name: ParamSpec.model_validate(spec) for name, spec in (plan.get("params") or {}).items()}
    searched = DefineByRun(params, dict(plan.get("fixed") or {})).searched()
    return {name: spec.distribution() for name, spec in searched.items()}


def _inferred_space(arm: ArmSummary) -> dict[str, BaseDistribution]:
    """For a plan without the arm's space: every logged param (but the seed and fixed
    values) that varies across completed trials; numbers as ranges (log-scaled when they
    span two decades), anything else as categories."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    done = [t for t in arm.trials if t.status == COMPLETED]
    names = dict.fromkeys(k for t in done for k in t.params if k != "seed" and k not in arm.fixed)
    space: dict[str, BaseDistribution] = {}
    for name in names:
        texts = sorted({t.params[name] for t in done if name in t.params})
        if len(texts) < 2:
            continue
        numbers = [n for n in map(_number, texts) if n is not None]
        if len(numbers) < len(texts):
            space[name] = CategoricalDistribution(texts)
            continue
        low, high = min(numbers), max(numbers)
        if all(text.lstrip("-").isdigit() for text in texts):
            space[name] = IntDistribution(int(low), int(high))
        else:
            space[name] = FloatDistribution(low, high, log=low > 0 and high / low >= 100)
    return space


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# -- the study ------------------------------------------------------------------------------
def shared_epoch(table: SearchTable) -> int | None:
    """The last epoch that every trial which trained (completed or stopped early, with a
    logged history) reached; None without such trials."""
    reached = [max(t.history) for t in table.trials if t.status in (COMPLETED, STOPPED) and t.history]
    return min(reached) if reached else None


def build_study(table: SearchTable, epoch: int | None = None) -> tuple[Study, Counter[str]]:
    """An in-memory Optuna study of the arm's trials, in start order, and the statuses of
    the trials that do not weigh in (a completed trial without a finite objective, or
    with a value its distribution does not hold, counts as such). With ``epoch``, every
    trial that trained weighs in with its value at that epoch, stopped ones included."""
    import optuna
    from optuna.trial import TrialState, create_trial

    with _quiet_optuna():  # no "A new study created in memory" line
        study = optuna.create_study(direction="maximize" if table.mode == "max" else "minimize")
    left_out: Counter[str] = Counter()
    trained = (COMPLETED,) if epoch is None else (COMPLETED, STOPPED)
    for record in table.trials:
        params = _optuna_params(record, table.space)
        value = record.metrics.get(table.objective) if epoch is None else record.history.get(epoch)
        if value is not None and not math.isfinite(value):
            value = None
        if record.status in trained and params is not None and value is not None:
            state = TrialState.COMPLETE
        else:
            left_out[str(record.status) if record.status != COMPLETED else "COMPLETED without a usable value"] += 1
            state = TrialState.PRUNED if record.status == STOPPED else TrialState.FAIL
        kept = params or {}
        study.add_trial(
            create_trial(
                state=state,
                value=value if state == TrialState.COMPLETE else None,
                params=kept,
                distributions={name: table.space[name] for name in kept},
            )
        )
    return study, left_out


def _optuna_params(record: RunRecord, space: Mapping[str, BaseDistribution]) -> dict[str, Any] | None:
    """A trial's logged params (MLflow holds text) as the values its distributions hold;
    a parameter a condition left out is absent; None when one does not fit."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    params: dict[str, Any] = {}
    for name, distribution in space.items():
        text = record.params.get(name)
        if text is None:
            continue
        if isinstance(distribution, CategoricalDistribution):
            matches = [c for c in distribution.choices if str(c) == text]
            if not matches:
                return None
            params[name] = matches[0]
            continue
        number = _number(text)
        if number is None:
            return None
        value = int(number) if isinstance(distribution, IntDistribution) else number
        if not distribution._contains(distribution.to_internal_repr(value)):
            return None
        params[name] = value
    return params


# -- importances and figures ----------------------------------------------------------------
def diagnose(table: SearchTable, folder: Path) -> ArmDiagnostics:
    """Importances, ``slice.png``, ``contour.png`` (the two most important parameters),
    ``parallel_coordinate.png`` and ``importance.json`` in ``folder``; or the reason
    there are none."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState

    study, left_out = build_study(table)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    epoch = shared_epoch(table) if len(complete) < MIN_COMPLETED else None
    if epoch is not None:
        early_study, early_left_out = build_study(table, epoch)
        early = early_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(early) > len(complete):
            study, left_out, complete = early_study, early_left_out, early
        else:
            epoch = None
    found = ArmDiagnostics(
        table.arm, table.objective, table.mode, table.space_source, len(complete), dict(left_out), epoch=epoch
    )
    shared = [name for name in table.space if complete and all(name in t.params for t in complete)]
    found.reason = _why_not(table, complete, shared)
    if found.reason is None:
        with _quiet_optuna():
            scores = get_param_importances(
                study, evaluator=FanovaImportanceEvaluator(seed=FANOVA_SEED), params=shared, normalize=True
            )
        found.importances = [ParamImportance(name, float(v), i + 1) for i, (name, v) in enumerate(scores.items())]
        found.plots = _figures(study, table, [p.name for p in found.importances], folder, epoch)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "importance.json").write_text(json.dumps(found.to_json(), indent=2) + "\n")
    return found


def diagnose_run(summary: RunSummary, folder: Path) -> list[ArmDiagnostics]:
    """``diagnose`` for every arm, each into ``folder/<arm>``."""
    return [diagnose(search_table(arm, arm_plan(summary, arm.arm)), folder / arm.arm) for arm in summary.arms]


def _why_not(table: SearchTable, complete: list[FrozenTrial], shared: list[str]) -> str | None:
    if not table.space and table.space_source == INFERRED:
        return "no logged parameter varied across the completed trials"
    if not table.space:
        return "nothing was searched (every parameter of the arm was fixed)"
    if len(table.space) == 1:
        return f"one searched parameter (`{next(iter(table.space))}`), which explains everything by construction"
    if len(complete) < MIN_COMPLETED:
        return f"{len(complete)} trial(s) to compare; importances need at least {MIN_COMPLETED}"
    if len(shared) < 2:
        return "fewer than two searched parameters were set in every completed trial (the others are conditional)"
    if len({t.value for t in complete}) < 2:
        return f"every completed trial scored the same {table.objective}, so there is nothing to explain"
    return None


def _figures(study: Study, table: SearchTable, ranked: list[str], folder: Path, epoch: int | None) -> list[Plot]:
    from optuna.visualization.matplotlib import plot_contour, plot_parallel_coordinate, plot_slice

    target = f"{table.objective} (validation)" if table.objective.startswith("val_") else table.objective
    if epoch is not None:
        target = f"{target} at epoch {epoch}"
    measured = table.objective if epoch is None else f"{table.objective} at epoch {epoch}"
    trial = "completed trial" if epoch is None else "trained trial"  # trained: completed or stopped early
    order = [*ranked, *(name for name in table.space if name not in ranked)]  # conditional ones last
    made = [
        (
            "slice.png",
            plot_slice,
            order,
            "Slice",
            f"Each {trial}'s {measured} against each searched parameter (darker: later trial); "
            "log-scaled parameters on a log axis.",
        ),
        (
            "contour.png",
            plot_contour,
            ranked[:2],
            "Contour",
            f"{measured} over the two most important parameters ({', '.join(ranked[:2])}), interpolated "
            f"between the {trial}s (dots): an estimate of the surface, not a measurement of it.",
        ),
        (
            "parallel_coordinate.png",
            plot_parallel_coordinate,
            ranked,
            "Parallel coordinates",
            f"One line per {trial} through its {measured} and its parameter values, coloured by {measured}.",
        ),
    ]
    plots = []
    folder.mkdir(parents=True, exist_ok=True)
    for name, draw, params, title, caption in made:
        with _quiet_optuna():
            drawn = draw(study, params=params, target_name=target)
            _save(drawn, folder / name)
        plots.append(Plot(folder / name, f"{table.arm}: {title}", caption))
    return plots


def _save(drawn: Any, path: Path) -> None:
    """Optuna draws with pyplot: save the figure at the report's resolution, then close
    it so the process keeps no figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    figure = np.ravel(drawn)[0].figure
    try:
        _readable_log_axes(figure)
        figure.savefig(path, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(figure)


def _readable_log_axes(figure: Any) -> None:
    """A log-scaled x-axis in a narrow slice panel labels its minor ticks too (2, 3, 4
    and 6 x 10^-4 ran into one another): label 1 and 3 x 10^k only."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    for ax in figure.axes:
        if ax.get_xscale() == "log":
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 3.0)))
            ax.xaxis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False))
            ax.xaxis.set_minor_formatter(NullFormatter())


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's matplotlib module is experimental (a warning per call), logs a note per
    contour, and its plots switch pyplot's style to ggplot: keep all three inside."""
    import matplotlib
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings(), matplotlib.rc_context({"figure.figsize": (7.0, 4.4)}):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)
