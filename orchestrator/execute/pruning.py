"""``search.scheduler`` -> a Ray Tune scheduler; Optuna's pruners (median, successive
halving, Hyperband) run as one.

``search.scheduler: median | sha | hyperband`` picks a pruner; ``asha`` and ``fifo`` are
Ray Tune's own (names and settings: ``orchestrator.search.registry.SCHEDULERS``).
Optuna decides (``Trial.should_prune`` on the intermediate values), Ray Tune stops:
this adapter keeps a small in-memory Optuna study that mirrors every trial's per-epoch
objective, asks the pruner after each report, and answers STOP when it says prune.
The searcher then tells its own study PRUNED (a stopped trial never counts as a
finished one; ``orchestrator.execute.searcher``).

Written by hand: Ray Tune has no Optuna-pruner scheduler, and Optuna's pruners need
trials in a study, which Ray's OptunaSearch does not consult for stopping.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from orchestrator.finite import is_finite_number
from orchestrator.search.registry import PRUNERS, SCHEDULERS, StoppingPlan
from orchestrator.trial.faults import ERROR_KEY


def build_scheduler(name: str, metric: str, mode: str, max_epochs: int, trials: int) -> TrialScheduler:
    """The ``search.scheduler`` named ``name`` (``registry.SCHEDULERS``): a Ray Tune
    scheduler, or an Optuna pruner run as one. With one epoch there is nothing to stop
    early: FIFO."""
    entry = SCHEDULERS[name]
    if max_epochs <= 1 or not entry.stops_early:
        return FIFOScheduler()
    if entry.optuna_pruner:
        return OptunaPrunerScheduler(name, metric, mode, max_epochs, trials)
    # the spec admits only max and min (``SearchSpec.objectives``); ``Plan.objectives`` holds them as str
    return entry.build(StoppingPlan(metric, cast(Literal["max", "min"], mode), max_epochs, trials))


def build_pruner(name: str, max_epochs: int, trials: int) -> optuna.pruners.BasePruner:
    """The Optuna pruner named ``name`` (its settings: ``registry.SCHEDULERS``)."""
    entry = SCHEDULERS.get(name)
    if entry is None or not entry.optuna_pruner:
        raise ValueError(f"unknown pruner {name!r}; known: {', '.join(PRUNERS)}")
    # a pruner reads only the sizes
    return entry.build(StoppingPlan(metric="", mode="max", max_epochs=max_epochs, trials=trials))


class OptunaPrunerScheduler(FIFOScheduler):
    """A FIFO scheduler that stops the trials an Optuna pruner would prune.

    Args:
        pruner: the name of an Optuna pruner in ``registry.SCHEDULERS`` (``registry.PRUNERS``).
        metric, mode: the objective the pruner watches (the arm's first objective).
        max_epochs: epochs per trial (Hyperband's max resource).
        trials: the search's trial count (sizes the median pruner's startup).
    """

    def __init__(self, pruner: str, metric: str, mode: str, max_epochs: int, trials: int) -> None:
        super().__init__()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._metric, self._mode = metric, mode
        self.pruner_name = pruner
        self._study = optuna.create_study(
            direction="maximize" if mode == "max" else "minimize", pruner=build_pruner(pruner, max_epochs, trials)
        )
        self._trials: dict[str, optuna.Trial] = {}
        self.pruned: list[str] = []

    def _trial(self, trial_id: str) -> optuna.Trial:
        if trial_id not in self._trials:  # also trials restored after an interruption
            self._trials[trial_id] = self._study.ask()
        return self._trials[trial_id]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._trial(trial.trial_id)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        value = result.get(self._metric)
        if ERROR_KEY in result or not is_finite_number(value) or trial.trial_id in self.pruned:
            return TrialScheduler.CONTINUE
        ot_trial = self._trial(trial.trial_id)
        ot_trial.report(float(value), int(result.get("training_iteration", len(ot_trial.study.trials))))
        if ot_trial.should_prune():
            self._study.tell(ot_trial, state=TrialState.PRUNED)
            self.pruned.append(trial.trial_id)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._finish(trial.trial_id, result)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._finish(trial.trial_id, None)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._finish(trial.trial_id, None)

    def _finish(self, trial_id: str, result: dict | None) -> None:
        ot_trial = self._trials.pop(trial_id, None)
        if ot_trial is None or trial_id in self.pruned:
            return
        value = (result or {}).get(self._metric)
        if ERROR_KEY in (result or {}) or not is_finite_number(value):
            self._study.tell(ot_trial, state=TrialState.FAIL)
        else:
            self._study.tell(ot_trial, float(value))

    def debug_string(self) -> str:
        return f"Optuna {self.pruner_name} pruner: {len(self.pruned)} trials stopped"
