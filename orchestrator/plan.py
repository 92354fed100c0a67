"""Spec -> Plan: the concrete searches, without starting anything.

A ``Plan`` carries everything the later stages need from the spec, so that they never
read the spec's ``Hypothesis``. Per arm, an ``ArmPlan`` says what to search (space,
fixed values, warm-start points) and how (sampler, scheduler, objectives, constraints,
trials). For the whole run, the parts in ``orchestrator.plan_parts`` say how every
search runs (``SearchSettings``: resources, concurrency, retries, limits), how the
winners are confirmed (``ConfirmPlan``) and how the claims are judged (``JudgePlan``);
the ``Plan`` itself adds the hypothesis's name and statement, its task and training
recipe, and where the spec came from. Like Ray Tune's split of Tuner / TuneConfig /
RunConfig: the arm plans are the per-search configs, the parts the run's.
``orchestrate plan`` prints it; ``execute`` runs it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.plan_parts import ConfirmPlan, JudgePlan, SearchSettings
from orchestrator.search.registry import SAMPLERS, samplers_for_objectives
from orchestrator.search.samplers import SamplerPlan, default_startup_trials
from orchestrator.search.space import DefineByRun, ParamSpec
from orchestrator.spec.constraints import Constraint, parse_constraint
from orchestrator.spec.loader import LoadedSpec
from orchestrator.spec.models import ConfirmSpec, Resources, SearchSpec, TaskSpec, TrainingSpec

__all__ = ["ArmPlan", "ConfirmPlan", "JudgePlan", "Plan", "SearchSettings", "confirm_rounds", "make_plan"]


@dataclass(frozen=True)
class ArmPlan:
    """One arm's search: the choices that may differ between arms. What every arm
    shares (resources, concurrency, retries, limits) is the plan's ``SearchSettings``.

    Attributes:
        arm: the arm's name in the spec (an identifier; claims refer to it).
        method: the registered method the arm trains (``methods.get_method``).
        routed: the method routes tokens (its FLOPs budget is what routing promises,
            so the spec's unscoped constraints bind it).
        space_file: the search-space YAML the params came from; None: no space.
        params: every parameter of the space, by name (searched unless in ``fixed``).
        fixed: values held fixed for every trial (they override the space).
        points_to_evaluate: the trials run first, before the sampler proposes any
            (the method's paper defaults, when the space has them).
        sampler: which Optuna sampler proposes the trials, its seed and startup trials.
        objectives: metric -> "max" | "min"; the first one chooses the arm's winner.
        constraints: the constraints that bind this arm (``constraints_for``).
        scheduler: what stops trials early: asha/fifo (Ray Tune) or median/sha/hyperband
            (Optuna pruners).
        trials: how many trials the arm's search runs.
    """

    arm: str
    method: str
    routed: bool
    space_file: str | None
    params: dict[str, ParamSpec]
    fixed: dict[str, Any]
    points_to_evaluate: list[dict[str, Any]]
    sampler: SamplerPlan
    objectives: dict[str, str]
    constraints: list[Constraint]
    scheduler: str
    trials: int

    @property
    def primary_metric(self) -> str:
        return next(iter(self.objectives))

    @property
    def primary_mode(self) -> str:
        return self.objectives[self.primary_metric]

    def space(self) -> DefineByRun:
        return DefineByRun(self.params, self.fixed)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["params"] = {
            k: v.model_dump(exclude_none=True, exclude_defaults=True) | {"type": v.type}
            for k, v in self.params.items()
        }
        out["constraints"] = [str(c) for c in self.constraints]
        out["sampler"] = {
            "name": self.sampler.name,
            "seed": self.sampler.seed,
            "startup_trials": self.sampler.startup_trials,
        }
        return out


@dataclass(frozen=True)
class Plan:
    """The whole run, as ``execute`` runs it and ``orchestrate plan`` prints it.

    Attributes:
        name: the hypothesis's name (its MLflow experiment, its run state and lock).
        statement: what the hypothesis states (the note on its MLflow run).
        spec_path: the hypothesis file the plan was made from.
        spec_sha256: that file's checksum with the profile applied (a run resumes only
            the state of the very same spec).
        profile: the profile applied ("default": none).
        task: the model, the dataset and its splits, the task metric.
        training: the training recipe every trial starts from.
        arms: one search per arm, in the spec's order.
        search: how every arm's search runs (the same for all arms).
        confirm: how the winners are confirmed (seeds, rounds, split).
        judge: the registered claims and how they are judged.
        refines: the name of the hypothesis this one refines (the spec's ``refines``,
            a file path resolved to that file's ``name``); None: a first version.
    """

    name: str
    statement: str
    spec_path: str
    spec_sha256: str
    profile: str
    task: TaskSpec
    training: TrainingSpec
    arms: list[ArmPlan]
    search: SearchSettings
    confirm: ConfirmPlan
    judge: JudgePlan
    refines: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """As ``plan.json`` on the hypothesis's run and ``orchestrate plan --json``: the
        report reads ``hypothesis``, ``task``, ``arms``, ``confirm``, ``judge`` and
        ``expected`` back (``report.collect``), so those keep the spec's shape."""
        return {
            "hypothesis": self.name,
            "profile": self.profile,
            "spec": self.spec_path,
            "spec_sha256": self.spec_sha256,
            "task": self.task.model_dump(),
            "training": self.training.model_dump(),
            "search": self.search.to_dict(),
            "arms": [a.to_dict() for a in self.arms],
            "confirm": self.confirm.to_dict(),
            "judge": self.judge.to_dict(),
            "expected": list(self.judge.claims),
            "refines": self.refines,
        }


def confirm_rounds(confirm: ConfirmSpec) -> list[list[int]]:
    """The seeds of each round of confirmation, fixed by the round alone (never by what
    an earlier look found): round 1 is ``first_seed .. first_seed + seeds - 1``, round 2
    the next ``seeds``, the last one cut at ``max_seeds``. Every arm that takes part in a
    round runs the same seeds, so the arms stay paired by seed.

        >>> confirm_rounds(ConfirmSpec(seeds=2, max_seeds=5, first_seed=10))
        [[10, 11], [12, 13], [14]]
    """
    from orchestrator.judge.sequential import look_sizes

    sizes = look_sizes(confirm.seeds, confirm.max_seeds)
    return [
        [confirm.first_seed + i for i in range(start, end)] for start, end in zip([0, *sizes[:-1]], sizes, strict=True)
    ]


def constraints_for(arm: str, routed: bool, texts: list[str]) -> list[Constraint]:
    """Which constraints bind an arm. ``"flops_ratio <= 0.25"`` binds routed arms (the
    budget is what routing promises; a LoRA baseline is never 'infeasible');
    ``"all: ..."`` binds every arm and ``"lora: ..."`` the arm named."""
    chosen = []
    for text in texts:
        scope, sep, rest = text.partition(":")
        if sep and scope.strip().isidentifier():
            if scope.strip() in ("all", arm):
                chosen.append(parse_constraint(rest))
        elif routed:
            chosen.append(parse_constraint(text))
    return chosen


def default_concurrency(resources: Resources, trials: int) -> int:
    """As many trials as the local CPUs hold (Ray's OptunaSearch runs one at a time
    unless told otherwise), never more than the trials."""
    cpus = os.cpu_count() or 1
    per_trial = max(resources.cpu, 1e-9)
    return max(1, min(trials, int(cpus // per_trial) or 1))


def first_point(searched: dict[str, ParamSpec], defaults: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    """The paper's defaults as a trial: conditional parameters are included exactly
    when their condition holds for the other defaults and the fixed values."""
    from orchestrator.search.space import condition_holds

    point = {k: v for k, v in defaults.items() if k in searched and not searched[k].when}
    for name, spec in searched.items():
        if spec.when and name in defaults and condition_holds(spec.when, {**fixed, **point}):
            point[name] = defaults[name]
    return point


def make_plan(loaded: LoadedSpec) -> Plan:
    """The plan of a loaded (checked) spec: everything a later stage needs from it."""
    from methods import get_method

    h = loaded.hypothesis
    arms = []
    for name, arm in h.arms.items():
        method_cls = get_method(arm.method)
        resolved = loaded.spaces.get(name)
        params = dict(resolved.space.params) if resolved else {}
        defaults = dict(resolved.space.defaults) if resolved else {}
        searched = {k: v for k, v in params.items() if k not in arm.fixed}
        point = first_point(searched, defaults, arm.fixed)
        sampler_name = h.search.sampler
        startup = (
            h.search.startup_trials
            if h.search.startup_trials is not None
            else default_startup_trials(sampler_name, h.search.trials_per_arm)
        )
        grid = DefineByRun(params, arm.fixed).grid() if SAMPLERS[sampler_name].grid else None
        arms.append(
            ArmPlan(
                arm=name,
                method=arm.method,
                routed=method_cls.routed,
                space_file=resolved.path if resolved else None,
                params=params,
                fixed=dict(arm.fixed),
                points_to_evaluate=[point] if point and searched else [],
                sampler=SamplerPlan(
                    sampler_name, h.search.seed, startup, len(h.search.objectives), grid, epochs=h.training.epochs
                ),
                objectives=dict(h.search.objectives),
                constraints=constraints_for(name, method_cls.routed, h.search.constraints),
                scheduler=h.search.scheduler,
                trials=h.search.trials_per_arm,
            )
        )
    if len(h.search.objectives) > 1 and not SAMPLERS[h.search.sampler].multi_objective:
        raise ValueError(f"sampler {h.search.sampler!r} handles one objective; use {samplers_for_objectives()}")
    return Plan(
        name=h.name,
        statement=h.statement,
        spec_path=str(loaded.path),
        spec_sha256=loaded.sha256,
        profile=loaded.profile,
        task=h.task,
        training=h.training,
        arms=arms,
        search=_search_settings(h.search),
        confirm=_confirm_plan(h.confirm),
        judge=JudgePlan(list(h.expected), h.judge.confidence, h.judge.family_wise),
        refines=refined_name(h.refines, loaded.path),
    )


def refined_name(refines: str | None, spec_path: str | os.PathLike[str]) -> str | None:
    """The hypothesis name ``refines`` names: a name as written, or a file path (relative
    to the spec's folder) read for its ``name:``, so the lineage links names whichever
    way the spec spelled it. A file that cannot give a name is bad input (exit 2)."""
    import re
    from pathlib import Path

    import yaml

    from orchestrator.errors import InputError

    if refines is None or re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,79}", refines):
        return refines
    path = Path(spec_path).parent / refines
    try:
        name = (yaml.safe_load(path.read_text()) or {}).get("name")
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise InputError(f"{spec_path}: refines: cannot read the refined hypothesis {path} ({exc})") from exc
    if not isinstance(name, str) or not name:
        raise InputError(f"{spec_path}: refines: {path} has no name: field")
    return name


def _search_settings(search: SearchSpec) -> SearchSettings:
    return SearchSettings(
        seed=search.seed,
        max_concurrent=search.max_concurrent or default_concurrency(search.resources_per_trial, search.trials_per_arm),
        resources=search.resources_per_trial,
        max_retries=search.max_retries,
        trial_timeout_s=search.trial_timeout_s,
        trial_memory_mb=search.trial_memory_mb,
        reuse_trials=search.reuse_trials,
    )


def _confirm_plan(confirm: ConfirmSpec) -> ConfirmPlan:
    return ConfirmPlan(
        seeds=confirm.seeds,
        split=confirm.split,
        first_seed=confirm.first_seed,
        max_seeds=confirm.max_seeds,
        rounds=confirm_rounds(confirm),
    )
