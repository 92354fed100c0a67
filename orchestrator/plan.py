"""Spec -> Plan: the concrete searches, without starting anything.

A ``Plan`` says, per arm, what to search (space, fixed values, warm-start points), how
(sampler, scheduler, objectives, constraints, trials, concurrency, resources) and,
for the whole run, how to confirm and judge. Like Ray Tune's split of
Tuner / TuneConfig / RunConfig: ``ArmPlan`` is what and how; ``RunPlan`` is where.
``orchestrate plan`` prints it; ``execute`` runs it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.search.samplers import SAMPLER_TRAITS, SamplerPlan, default_startup_trials
from orchestrator.search.space import DefineByRun, ParamSpec
from orchestrator.spec.constraints import Constraint, parse_constraint
from orchestrator.spec.loader import LoadedSpec
from orchestrator.spec.models import ConfirmSpec, Hypothesis, Resources


@dataclass(frozen=True)
class ArmPlan:
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
    max_concurrent: int
    resources: Resources
    max_retries: int = 1

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
        out["params"] = {k: v.model_dump(exclude_none=True, exclude_defaults=True) | {"type": v.type} for k, v in self.params.items()}
        out["constraints"] = [str(c) for c in self.constraints]
        out["sampler"] = {"name": self.sampler.name, "seed": self.sampler.seed, "startup_trials": self.sampler.startup_trials}
        out["resources"] = self.resources.model_dump()
        return out


@dataclass(frozen=True)
class Plan:
    hypothesis: Hypothesis
    spec_path: str
    spec_sha256: str
    profile: str
    arms: list[ArmPlan]
    claims: list[str] = field(default_factory=list)

    @property
    def confirm_rounds(self) -> list[list[int]]:
        return confirm_rounds(self.hypothesis.confirm)

    def to_dict(self) -> dict[str, Any]:
        h = self.hypothesis
        return {
            "hypothesis": h.name, "profile": self.profile, "spec": self.spec_path, "spec_sha256": self.spec_sha256,
            "task": h.task.model_dump(), "training": h.training.model_dump(),
            "arms": [a.to_dict() for a in self.arms],
            "confirm": h.confirm.model_dump(), "judge": h.judge.model_dump(), "expected": self.claims,
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
    return [[confirm.first_seed + i for i in range(start, end)] for start, end in zip([0, *sizes[:-1]], sizes)]


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
        startup = h.search.startup_trials if h.search.startup_trials is not None else default_startup_trials(sampler_name, h.search.trials_per_arm)
        grid = DefineByRun(params, arm.fixed).grid() if sampler_name == "grid" else None
        arms.append(
            ArmPlan(
                arm=name, method=arm.method, routed=method_cls.routed,
                space_file=resolved.path if resolved else None, params=params, fixed=dict(arm.fixed),
                points_to_evaluate=[point] if point and searched else [],
                sampler=SamplerPlan(sampler_name, h.search.seed, startup, len(h.search.objectives), grid),
                objectives=dict(h.search.objectives),
                constraints=constraints_for(name, method_cls.routed, h.search.constraints),
                scheduler=h.search.scheduler, trials=h.search.trials_per_arm,
                max_concurrent=h.search.max_concurrent or default_concurrency(h.search.resources_per_trial, h.search.trials_per_arm),
                resources=h.search.resources_per_trial, max_retries=h.search.max_retries,
            )
        )
    if len(h.search.objectives) > 1 and not SAMPLER_TRAITS[h.search.sampler][0]:
        raise ValueError(f"sampler {h.search.sampler!r} handles one objective; use botorch, tpe, gp or nsga2")
    return Plan(h, str(loaded.path), loaded.sha256, loaded.profile, arms, list(h.expected))
