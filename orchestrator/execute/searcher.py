"""Ray Tune's OptunaSearch, made honest about constraints and early stopping.

Two things Ray 2.60's ``OptunaSearch`` gets wrong for us (STACK-NOTES):

- A trial stopped early by ASHA reaches Optuna as COMPLETE with its partial value,
  which teaches the sampler that promising-but-stopped configurations are bad ones.
  Here a trial that did not finish its epochs is told as PRUNED, with its last result
  reported as an intermediate value at its epoch: Ray passes the result that stopped
  a trial only to ``on_trial_complete``, never to ``on_trial_result``, so a trial ASHA
  stopped after one epoch would reach Optuna with no value at all (TPE ranks stopped
  trials by their last intermediate value; ``botorch`` reads every epoch).
- Constraints: Optuna 5 wants ``trial.set_constraint(key, value)`` (<= 0 feasible)
  before ``tell``; the deprecated ``constraints_func`` lambda also breaks Ray's
  pickling of the searcher at the first experiment checkpoint.

It also starts from finished trials of earlier runs (``prior_trials``, see
``orchestrator.execute.archive``): Ray's ``evaluated_rewards`` cannot carry a
define-by-run space, several objectives, constraints or pruned trials.

Everything else (suggestion, bookkeeping, checkpointing) is Ray's and Optuna's.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from typing import Any, cast

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from orchestrator.finite import is_finite_number
from orchestrator.results import STOPPED, TrialRecord
from orchestrator.search.model_subset import UNKNOWN_OBJECTIVES_ATTR
from orchestrator.search.samplers import limited_threads
from orchestrator.spec.constraints import Constraint
from orchestrator.trial.faults import ERROR_KEY

#: A constraint whose metric was never reported (a failed trial) counts as violated by this much.
MISSING_METRIC_VIOLATION = 1e6


class HonestOptunaSearch(OptunaSearch):
    """OptunaSearch + constraints via ``set_constraint`` + PRUNED for stopped trials.

    Args:
        constraints: bound on reported metrics; set on the Optuna trial before ``tell``.
        epochs: a trial whose last result has fewer epochs was stopped early.
        prior_trials: finished trials of an earlier search, told to the study first.
        **kwargs: passed to ``OptunaSearch`` (space, metric, mode, sampler, ...).
    """

    def __init__(
        self,
        *args: Any,
        constraints: list[Constraint] | None = None,
        epochs: int = 1,
        on_suggest: Any = None,
        prior_trials: list[TrialRecord] | None = None,
        **kwargs: Any,
    ) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # read by _setup_study, which OptunaSearch.__init__ calls
        self._constraints = list(constraints or [])
        self._epochs = epochs
        self._prior_trials = list(prior_trials or [])
        super().__init__(*args, **kwargs)
        self.suggest_seconds: list[float] = []
        self._on_suggest = on_suggest  # progress display: the sampler's cost is visible

    @property
    def _study(self) -> optuna.Study:
        """Ray's study: Ray types ``_ot_study`` as the None it starts with, and
        ``_setup_study`` (run by ``__init__``, the space being given) replaces it."""
        return cast(optuna.Study, self._ot_study)

    def _define_by_run(self, ot_trial: optuna.Trial) -> Any:
        """Ray's ``_space`` called on a trial: the plan always gives a define-by-run
        function (``orchestrator.plan``), which Ray types as one of several space kinds."""
        return cast(Callable[[optuna.Trial], Any], self._space)(ot_trial)

    def _setup_study(self, mode: Any) -> None:
        """Ray's study, then the prior trials, then the first points (enqueued after,
        so the prior trials' ``ask`` does not consume them)."""
        points, self._points_to_evaluate = self._points_to_evaluate, []  # Ray tests it for truth
        super()._setup_study(mode)
        self._points_to_evaluate = points
        if self._prior_trials:
            # no model fit per told trial
            sampler, self._study.sampler = self._study.sampler, optuna.samplers.RandomSampler()
            try:
                for record in self._prior_trials:
                    self._tell_prior(record)
            finally:
                self._study.sampler = sampler
        for point in points or []:
            self._study.enqueue_trial(point)

    def _tell_prior(self, record: TrialRecord) -> None:
        self._study.enqueue_trial(record.params, skip_if_exists=False)
        ot_trial = self._study.ask()
        self._define_by_run(ot_trial)  # define-by-run: takes the enqueued values, records the distributions
        metrics = record.metrics
        for constraint in self._constraints:
            value = metrics.get(constraint.metric)
            ot_trial.set_constraint(
                str(constraint),
                constraint.violation(float(value)) if is_finite_number(value) else MISSING_METRIC_VIOLATION,
            )
        values = [metrics.get(m) for m in _as_list(self.metric)]
        numbers = [float(v) for v in values if is_finite_number(v)]
        if record.status == STOPPED:
            self._report_last(ot_trial, metrics)
            self._study.tell(ot_trial, state=TrialState.PRUNED)
        elif metrics.get("infeasible_before_training") or len(numbers) < len(values):
            ot_trial.set_user_attr(UNKNOWN_OBJECTIVES_ATTR, True)
            worst = [-1e9 if mode == "max" else 1e9 for mode in _as_list(self.mode)]
            self._study.tell(ot_trial, worst if len(worst) > 1 else worst[0])
        else:
            self._study.tell(ot_trial, numbers if len(numbers) > 1 else numbers[0])

    def suggest(self, trial_id: str) -> dict | None:
        started = time.perf_counter()
        with limited_threads(1):
            config = super().suggest(trial_id)
        self.suggest_seconds.append(time.perf_counter() - started)
        if self._on_suggest is not None:
            self._on_suggest(self.suggest_seconds[-1])
        return config

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_on_suggest"] = None  # a bound method of the recorder: not part of the checkpoint
        return state

    def save(self, checkpoint_path: str) -> None:
        """Ray's ``save`` pickles ``__dict__`` as is, which would drag the progress
        callback (and the recorder behind it) into every experiment checkpoint."""
        with open(checkpoint_path, "wb") as out:
            pickle.dump(self.__getstate__(), out)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if ERROR_KEY in result or any(m not in result for m in _as_list(self.metric)):
            return None  # a failure report carries no objective values
        return super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and ERROR_KEY in result:  # the trial failed of its own doing (orchestrator.trial.faults)
            result, error = None, True
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        for constraint in self._constraints:
            value = (result or {}).get(constraint.metric)
            violation = constraint.violation(float(value)) if is_finite_number(value) else MISSING_METRIC_VIOLATION
            ot_trial.set_constraint(str(constraint), violation)
        if result and result.get("infeasible_before_training"):
            # Never trained: its objectives are unknown. Optuna's constrained samplers
            # need values, so it gets the worst ones; the constraint says why, and the
            # user attribute tells model-based samplers not to fit those values.
            ot_trial.set_user_attr(UNKNOWN_OBJECTIVES_ATTR, True)
            worst = [-1e9 if mode == "max" else 1e9 for mode in _as_list(self.mode)]
            self._study.tell(ot_trial, worst if len(worst) > 1 else worst[0])
            self._completed_trials.add(trial_id)
            return None
        stopped_early = result is not None and not error and int(result.get("epoch", self._epochs)) < self._epochs
        if stopped_early:
            self._report_last(ot_trial, result or {})
            self._study.tell(ot_trial, state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return None
        if result and any(not is_finite_number(result.get(m)) for m in _as_list(self.metric)) and not error:
            self._study.tell(ot_trial, state=TrialState.FAIL)
            self._completed_trials.add(trial_id)
            return None
        return super().on_trial_complete(trial_id, result, error)

    def _report_last(self, ot_trial: optuna.Trial, result: dict) -> None:
        """A stopped trial's last result as its intermediate value at its epoch, as Ray's
        ``on_trial_result`` reports the others (one objective: Optuna keeps no
        intermediate values for several)."""
        if isinstance(self.metric, (list, tuple)) or not is_finite_number(result.get(self.metric)):
            return
        step = int(result.get("training_iteration", result.get("epoch", 0)))
        if step > 0:  # never reported before: Ray withheld this result from on_trial_result
            ot_trial.report(float(result[self.metric]), step)


def _as_list(metric: Any) -> list[str]:
    return list(metric) if isinstance(metric, (list, tuple)) else [metric]
