"""One Tuner for every arm's search: a searcher and a scheduler that dispatch by arm.

Ray Tune gives a Tuner one searcher and one scheduler, but each arm needs its own: its
own sampler over its own space (LoRA's rank is not AdaMSS's K), and early stopping
that compares a trial only with trials of the same method. A Tuner per arm did that,
at the price of a fresh set of worker processes per arm, each importing torch,
transformers and peft (~8-10 s of CPU on a small machine) before its first trial; on
a cluster, an arm's last slow trial also kept every other GPU idle until the next
arm's Tuner started. These two classes put all arms in one Tuner instead (Ray Tune
does not ship such a dispatcher): every suggested config carries its arm under
``ARM_KEY``, and each event goes to that arm's own searcher or scheduler, which are
the usual ones (``HonestOptunaSearch``, ASHA, FIFO, an Optuna pruner).

Arms are served in the order given: a free slot goes to the first arm that still has
trials to start and a suggestion ready. With ``max_concurrent: 1`` the arms are thus
searched one after the other, as before; with more slots the next arm starts as soon
as the previous one has nothing left to start.
"""

from __future__ import annotations

import pickle
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from orchestrator.trial.trainable import ARM_KEY


class ArmSearcher(Searcher):
    """Suggests for each arm from its own searcher, ``budget[arm]`` trials each.

    Args:
        searchers: arm -> that arm's searcher (already given its space, metric, mode).
        budget: arm -> how many new trials the arm runs in this Tuner.
    """

    def __init__(self, searchers: dict[str, Searcher], budget: dict[str, int]) -> None:
        super().__init__()
        self.searchers = searchers
        self.budget = dict(budget)
        self.started: dict[str, int] = {arm: 0 for arm in searchers}
        self.arm_of: dict[str, str] = {}  # trial id -> arm

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return False  # each arm's searcher was built with its own space, metric and mode

    # Ray annotates Searcher.suggest as ``Optional[Dict]``, yet its docstring and its
    # caller (SearchGenerator) take ``Searcher.FINISHED``, a string, as well.
    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]
        waiting = False
        for arm, searcher in self.searchers.items():
            if self.started[arm] >= self.budget.get(arm, 0):
                continue
            config: dict | str | None = searcher.suggest(trial_id)  # Ray's annotation leaves out FINISHED
            if isinstance(config, str):  # Searcher.FINISHED, its one string: e.g. a grid with fewer points than trials
                self.budget[arm] = self.started[arm]
                continue
            if config is None:  # this arm's searcher waits for results; another arm may not
                waiting = True
                continue
            self.started[arm] += 1
            self.arm_of[trial_id] = arm
            return {**config, ARM_KEY: arm}
        return None if waiting else Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.arm_of:
            self.searchers[self.arm_of[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.arm_of:
            self.searchers[self.arm_of[trial_id]].on_trial_complete(trial_id, result=result, error=error)

    # -- experiment checkpoints (Tuner.restore) ------------------------------------------
    def save(self, checkpoint_path: str) -> None:
        """Each arm's searcher's own state (``__getstate__`` where it defines one), and
        this dispatcher's counts; never a live callback."""
        arms = {
            arm: dict(searcher.__getstate__() if hasattr(searcher, "__getstate__") else searcher.__dict__)
            for arm, searcher in self.searchers.items()
        }
        with open(checkpoint_path, "wb") as out:
            pickle.dump({"arms": arms, "budget": self.budget, "started": self.started, "arm_of": self.arm_of}, out)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as source:
            saved = pickle.load(source)
        for arm, state in saved["arms"].items():
            if arm in self.searchers:
                self.searchers[arm].__dict__.update(state)
        self.budget, self.started, self.arm_of = saved["budget"], saved["started"], saved["arm_of"]


class ArmScheduler(FIFOScheduler):
    """Hands each trial's events to its arm's scheduler; trials start in FIFO order
    (ASHA and the Optuna pruners start them so too: they only decide when to stop)."""

    def __init__(self, schedulers: dict[str, TrialScheduler]) -> None:
        super().__init__()
        self.schedulers = schedulers

    def _of(self, trial: Any) -> TrialScheduler:
        return self.schedulers[trial.config[ARM_KEY]]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # each arm's scheduler has its metric and mode

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{arm}: {scheduler.debug_string()}" for arm, scheduler in self.schedulers.items())
