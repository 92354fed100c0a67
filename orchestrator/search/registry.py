"""The samplers and schedulers a hypothesis may name: one table each, the only lists of them.

``search.sampler`` and ``search.scheduler`` accept exactly the names here (the spec's
``Literal`` types are built from these tables), the spec checks and the planner read
their traits from here, and their messages name the samplers from here. Adding a
sampler is one ``SamplerEntry`` in ``SAMPLERS``; a scheduler or an Optuna pruner, one
``SchedulerEntry`` in ``SCHEDULERS``.

Importing this module imports neither Optuna nor Ray nor torch (the spec imports it to
validate a file): every builder imports its library when it is called, as Ray Tune's
``SEARCH_ALG_IMPORT`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import optuna

    from orchestrator.search.samplers import SamplerPlan


@dataclass(frozen=True)
class SamplerEntry:
    """One sampler: how it is built, and what the planner and the checks need to know of it.

    Args:
        name: what ``search.sampler`` says.
        build: a ``SamplerPlan`` -> a fresh Optuna sampler (imports its library when called).
        multi_objective: takes several objectives (else the spec rejects more than one).
        model_based: fits a model to finished trials, so it gets random startup trials first
            (``samplers.default_startup_trials``).
        constraints: reads ``trial.set_constraint`` (the search's constraints steer it).
        pending_points: sees running trials when several run at once (``max_concurrent > 1``).
        grid: enumerates a finite grid of the space (the planner builds that grid; the
            checks reject a space that has none).
        imports: modules its builder needs beyond Optuna.
        legacy: kept for comparison only, never suggested in a message.
    """

    name: str
    build: Callable[[SamplerPlan], optuna.samplers.BaseSampler]
    multi_objective: bool
    model_based: bool
    constraints: bool = False
    pending_points: bool = False
    grid: bool = False
    imports: tuple[str, ...] = ()
    legacy: bool = False


def _optuna_sampler(class_name: str, **kwargs: Any) -> optuna.samplers.BaseSampler:
    """``optuna.samplers.<class_name>(**kwargs)``, Optuna imported only now."""
    import optuna

    return getattr(optuna.samplers, class_name)(**kwargs)


def _botorch(plan: SamplerPlan) -> optuna.samplers.BaseSampler:
    from orchestrator.search.botorch_sampler import MixedBoTorchSampler

    return MixedBoTorchSampler(n_startup_trials=plan.startup_trials, seed=plan.seed, fidelity_steps=plan.epochs)


def _botorch_legacy(plan: SamplerPlan) -> optuna.samplers.BaseSampler:
    import optuna
    from optuna_integration import BoTorchSampler

    from orchestrator.search.samplers import botorch_candidates

    return BoTorchSampler(
        candidates_func=botorch_candidates,
        n_startup_trials=plan.startup_trials,
        consider_running_trials=True,  # parallel trials: pending points enter qLogEI / qLogNEHVI
        seed=plan.seed,
        independent_sampler=optuna.samplers.RandomSampler(seed=plan.seed),
    )


#: In the order the spec's error message lists them.
SAMPLERS: dict[str, SamplerEntry] = {
    entry.name: entry
    for entry in (
        SamplerEntry(
            "botorch",
            _botorch,
            multi_objective=True,
            model_based=True,
            constraints=True,
            pending_points=True,
            imports=("botorch", "gpytorch"),
        ),
        SamplerEntry(
            "botorch-legacy",
            _botorch_legacy,
            multi_objective=True,
            model_based=True,
            constraints=True,
            pending_points=True,
            imports=("optuna_integration", "botorch", "gpytorch"),
            legacy=True,
        ),
        SamplerEntry(
            "gp",
            lambda plan: _optuna_sampler("GPSampler", seed=plan.seed, n_startup_trials=plan.startup_trials),
            multi_objective=True,
            model_based=True,
            constraints=True,
            pending_points=True,
            imports=("torch", "scipy"),
        ),
        # constant_liar: running trials count as bad ones, so concurrent asks spread (Optuna 5's default, said here)
        SamplerEntry(
            "tpe",
            lambda plan: _optuna_sampler(
                "TPESampler",
                seed=plan.seed,
                n_startup_trials=plan.startup_trials,
                multivariate=True,
                group=True,
                constant_liar=True,
            ),
            multi_objective=True,
            model_based=True,
            constraints=True,
            pending_points=True,
        ),
        SamplerEntry(
            "cmaes",
            lambda plan: _optuna_sampler(
                "CmaEsSampler", seed=plan.seed, warn_independent_sampling=False, n_startup_trials=plan.startup_trials
            ),
            multi_objective=False,
            model_based=True,
            imports=("cmaes",),
        ),
        SamplerEntry(
            "nsga2",
            lambda plan: _optuna_sampler(
                "NSGAIISampler", seed=plan.seed, population_size=max(4, plan.startup_trials or 4)
            ),
            multi_objective=True,
            model_based=False,
            constraints=True,
        ),
        SamplerEntry(
            "qmc",
            lambda plan: _optuna_sampler("QMCSampler", seed=plan.seed, scramble=True, warn_independent_sampling=False),
            multi_objective=True,
            model_based=False,
        ),
        SamplerEntry(
            "random",
            lambda plan: _optuna_sampler("RandomSampler", seed=plan.seed),
            multi_objective=True,
            model_based=False,
        ),
        SamplerEntry(
            "grid",
            lambda plan: _optuna_sampler("GridSampler", search_space=plan.grid or {}, seed=plan.seed),
            multi_objective=True,
            model_based=False,
            grid=True,
        ),
    )
}


@dataclass(frozen=True)
class StoppingPlan:
    """What a scheduler needs to stop trials early: the objective it watches (the arm's
    first) and the search's size."""

    metric: str
    mode: Literal["max", "min"]
    max_epochs: int
    trials: int


@dataclass(frozen=True)
class SchedulerEntry:
    """One ``search.scheduler``: a Ray Tune scheduler, or an Optuna pruner that
    ``orchestrator.execute.pruning.OptunaPrunerScheduler`` runs as one.

    Args:
        name: what ``search.scheduler`` says.
        build: a ``StoppingPlan`` -> the Ray ``TrialScheduler`` (``optuna_pruner`` false)
            or the Optuna ``BasePruner`` (true); imports its library when called.
        optuna_pruner: ``build`` makes an Optuna pruner, not a Ray scheduler.
        stops_early: stops trials before their last epoch (``fifo`` never does).
    """

    name: str
    build: Callable[[StoppingPlan], Any]
    optuna_pruner: bool
    stops_early: bool = True


def _ray_scheduler(class_name: str, **kwargs: Any) -> Any:
    from ray.tune import schedulers

    return getattr(schedulers, class_name)(**kwargs)


def _optuna_pruner(class_name: str, **kwargs: Any) -> Any:
    import optuna

    return getattr(optuna.pruners, class_name)(**kwargs)


def _asha(stop: StoppingPlan) -> Any:
    return _ray_scheduler(
        "ASHAScheduler",
        metric=stop.metric,
        mode=stop.mode,
        time_attr="training_iteration",
        max_t=stop.max_epochs,
        grace_period=1,
        reduction_factor=2,
    )


def _median(stop: StoppingPlan) -> Any:
    # Optuna's default waits for 5 finished trials; small searches would never prune
    return _optuna_pruner("MedianPruner", n_startup_trials=min(5, max(1, stop.trials // 4)), n_warmup_steps=0)


def _hyperband(stop: StoppingPlan) -> Any:
    return _optuna_pruner("HyperbandPruner", min_resource=1, max_resource=max(1, stop.max_epochs), reduction_factor=3)


#: Ray's ASHA runs with grace 1 and reduction factor 2; the pruners match it.
SCHEDULERS: dict[str, SchedulerEntry] = {
    entry.name: entry
    for entry in (
        SchedulerEntry("asha", _asha, optuna_pruner=False),
        SchedulerEntry("fifo", lambda stop: _ray_scheduler("FIFOScheduler"), optuna_pruner=False, stops_early=False),
        SchedulerEntry("median", _median, optuna_pruner=True),
        SchedulerEntry(
            "sha",
            lambda stop: _optuna_pruner("SuccessiveHalvingPruner", min_resource=1, reduction_factor=2),
            optuna_pruner=True,
        ),
        SchedulerEntry("hyperband", _hyperband, optuna_pruner=True),
    )
}

PRUNERS = tuple(name for name, entry in SCHEDULERS.items() if entry.optuna_pruner)


def in_words(names: list[str] | tuple[str, ...]) -> str:
    """``a, b or c``: names as a message lists them."""
    return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


def samplers_for_objectives() -> str:
    """The samplers to suggest for several objectives (and constraints), in words."""
    suited = [
        name for name, entry in SAMPLERS.items() if entry.multi_objective and entry.constraints and not entry.legacy
    ]
    return in_words(suited)


def scheduler_description() -> str:
    """``search.scheduler``'s help text, from the table."""
    ray = "/".join(name for name, entry in SCHEDULERS.items() if not entry.optuna_pruner)
    return f"{ray} (Ray Tune) or {'/'.join(PRUNERS)} (Optuna pruners)"
