"""Optuna's pruners (median, successive halving, Hyperband) as a Ray Tune scheduler.

``search.scheduler: median | sha | hyperband`` picks one; ``asha`` and ``fifo`` are
Ray Tune's own. Optuna decides (``Trial.should_prune`` on the intermediate values),
Ray Tune stops: this adapter keeps a small in-memory Optuna study that mirrors every
trial's per-epoch objective, asks the pruner after each report, and answers STOP
when it says prune. The searcher then tells its own study PRUNED (a stopped trial
never counts as a finished one; ``orchestrator.execute.searcher``).

Written by hand: Ray Tune has no Optuna-pruner scheduler, and Optuna's pruners need
trials in a study, which Ray's OptunaSearch does not consult for stopping.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from orchestrator.trial.faults import ERROR_KEY
from orchestrator.finite import is_finite_number

PRUNERS = ("median", "sha", "hyperband")


def build_pruner(name: str, max_epochs: int, trials: int) -> optuna.pruners.BasePruner:
    """Ray's ASHA here runs with grace 1 and reduction factor 2; the pruners match it."""
    if name == "median":
        # Optuna's default waits for 5 finished trials; small searches would never prune
        return optuna.pruners.MedianPruner(n_startup_trials=min(5, max(1, trials // 4)), n_warmup_steps=0)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, max_epochs), reduction_factor=3)
    raise ValueError(f"unknown pruner {name!r}; known: {', '.join(PRUNERS)}")


class OptunaPrunerScheduler(FIFOScheduler):
    """A FIFO scheduler that stops the trials an Optuna pruner would prune.

    Args:
        pruner: ``median``, ``sha`` or ``hyperband``.
        metric, mode: the objective the pruner watches (the arm's first objective).
        max_epochs: epochs per trial (Hyperband's max resource).
        trials: the search's trial count (sizes the median pruner's startup).
    """

    def __init__(self, pruner: str, metric: str, mode: str, max_epochs: int, trials: int) -> None:
        super().__init__()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._metric, self._mode = metric, mode
        self.pruner_name = pruner
        self._study = optuna.create_study(direction="maximize" if mode == "max" else "minimize", pruner=build_pruner(pruner, max_epochs, trials))
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
