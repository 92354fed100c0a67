"""Checks that need more than one field: methods, spaces, claims, constraints.

Each check appends ``SpecIssue``s rather than raising, so ``orchestrate validate``
reports every problem of a file at once.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from orchestrator.metrics import known_metrics
from orchestrator.search.space import SpaceFile
from orchestrator.spec.constraints import parse_constraint
from orchestrator.spec.errors import SpecError, SpecIssue
from orchestrator.spec.errors import clip as _clip  # one rule for quoting user values
from orchestrator.spec.models import TRAINING_PARAMS, Hypothesis, TrainingSpec
from orchestrator.spec.pydantic_errors import issues_from_validation
from orchestrator.spec.yaml_lines import LocatedYaml, load_located, read_user_file
from orchestrator.tasks.types import get_task_type

if TYPE_CHECKING:
    from collections.abc import Callable

    from methods.base import Requirement
    from orchestrator.tasks.types.base import TaskType


@dataclass(frozen=True)
class ResolvedSpace:
    path: str
    space: SpaceFile


def shipped_space_path(name: str) -> Path:
    return Path(str(resources.files("search_spaces").joinpath(name)))


def resolve_space_path(arm_space: str | None, method: str, base_dir: Path) -> Path | None:
    """A relative path is looked up next to the hypothesis first, then among the
    shipped spaces; no path means the method's shipped space (None if it has none)."""
    if arm_space is None:
        candidate = shipped_space_path(f"{method}.yaml")
        return candidate if candidate.exists() else None
    given = Path(arm_space)
    candidates = [given] if given.is_absolute() else [base_dir / given, shipped_space_path(given.name)]
    if not given.is_absolute() and given.parts and given.parts[0] == "search_spaces":
        candidates.append(shipped_space_path(str(Path(*given.parts[1:]))))
    for candidate in candidates:
        if _exists(candidate):
            return candidate
    return candidates[0]


def _exists(path: Path) -> bool:
    """``Path.exists`` raises for a NUL byte (ValueError) or a too-long name (OSError)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def load_space(path: Path) -> ResolvedSpace:
    return _load_space_located(path)[0]


def _load_space_located(path: Path) -> tuple[ResolvedSpace, LocatedYaml]:
    text = read_user_file(path, "search space")  # also: not UTF-8, too large, /dev/zero
    located = load_located(text, str(path))
    if not isinstance(located.value, dict):
        raise SpecError(
            [SpecIssue(str(path), located.line_of(()), "", "a search space must be a mapping with 'params'")]
        )
    try:
        return ResolvedSpace(str(path), SpaceFile.model_validate(located.value)), located
    except ValidationError as exc:
        raise SpecError(issues_from_validation(exc, located)) from None


def _cached_space(path: Path, cache: dict[str, Any] | None) -> tuple[ResolvedSpace, LocatedYaml]:
    """Each space file is read once per ``load_hypothesis``, not once per arm and profile."""
    if cache is None:
        return _load_space_located(path)
    key = str(path)
    if key not in cache:
        try:
            cache[key] = _load_space_located(path)
        except SpecError as exc:
            cache[key] = exc
    if isinstance(cache[key], SpecError):
        raise cache[key]
    return cache[key]


def _check_task(spec: Hypothesis, task_type: TaskType, issue: Callable[[tuple[Any, ...], str], None]) -> None:
    """The model and dataset references as the task's type reads them, and no field that
    only another type reads (a ``text_column`` on an image task would be ignored), and a
    metric the type reports (exact match is a causal LM's, accuracy a classifier's)."""
    for name, problem in (
        ("model", task_type.model_ref_problem(spec.task.model)),
        ("dataset", task_type.dataset_ref_problem(spec.task.dataset)),
    ):
        if problem is None:
            continue
        if name in spec.task.model_fields_set:
            issue(("task", name), problem)
        else:  # the default is the text type's: blame the type, and say so
            issue(("task", "type"), f"task.{name} is not set, and its default: {problem}")
    for name in sorted((task_type.TYPE_FIELDS - task_type.own_fields) & spec.task.model_fields_set):
        issue(("task", name), f"task.{name} does not apply to task.type {task_type.name}; remove it")
    if spec.task.metric not in task_type.metrics:
        where = ("task", "metric") if "metric" in spec.task.model_fields_set else ("task", "type")
        issue(
            where,
            f"task.metric {spec.task.metric} does not apply to task.type {task_type.name}; "
            f"use {' or '.join(task_type.metrics)}",
        )


def check_hypothesis(
    spec: Hypothesis,
    located: LocatedYaml,
    base_dir: Path,
    space_cache: dict[str, Any] | None = None,
    check_requirements: bool = True,
) -> tuple[list[SpecIssue], dict[str, ResolvedSpace]]:
    """All cross-field checks; returns the issues and each arm's resolved space.
    ``space_cache`` (any dict, shared between calls) saves re-reading space files.
    ``check_requirements`` refuses arms whose method needs a package that is not
    installed; off for commands that read a spec without training (re-judging)."""
    from methods import UnknownMethodError, get_method

    issues: list[SpecIssue] = []
    spaces: dict[str, ResolvedSpace] = {}
    arm_metrics: dict[str, dict[str, str]] = {}

    def issue(path: tuple[Any, ...], message: str) -> None:
        issues.append(SpecIssue(located.file, located.line_of(path), ".".join(map(str, path)), message))

    task_type = get_task_type(spec.task.type)
    _check_task(spec, task_type, issue)

    for arm_name, arm in spec.arms.items():
        try:
            method_cls = get_method(arm.method)
        except UnknownMethodError as exc:
            issue(("arms", arm_name, "method"), str(exc))
            continue
        except ImportError as exc:  # a registered method whose module is missing
            issue(("arms", arm_name, "method"), f"method {arm.method!r} failed to import: {exc}")
            continue
        if check_requirements:
            _check_requirements(arm_name, arm.method, method_cls.requires, issue)
        if spec.task.type in method_cls.unsupported_task_types:
            issue(
                ("arms", arm_name, "method"),
                f"method {arm.method!r} cannot train task.type {spec.task.type}: "
                f"{method_cls.unsupported_task_types[spec.task.type]}",
            )
        arm_metrics[arm_name] = known_metrics(spec.task.metric, method_cls.metrics, task_type.flop_unit)
        aliases = dict(getattr(method_cls.Config, "aliases", {}) or {})  # e.g. AdaMSS's K -> num_subspaces
        accepted = set(method_cls.Config.model_fields) | set(TRAINING_PARAMS) | set(aliases)
        for key in arm.fixed:
            if key not in accepted:
                issue(("arms", arm_name, "fixed", key), _not_accepted(key, arm.method, accepted))
        _check_fixed_training(arm_name, {k: v for k, v in arm.fixed.items() if k in TRAINING_PARAMS}, issue)
        method_fixed = {k: v for k, v in arm.fixed.items() if k in method_cls.Config.model_fields or k in aliases}
        try:
            method_cls.Config(**method_fixed)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ("arms", arm_name, "fixed", *err["loc"])
                issue(loc, err["msg"])
        except Exception as exc:
            # (e.g. `target_modules: 5` -> "'int' object is not iterable") is still bad input
            issue(
                ("arms", arm_name, "fixed"), f"method {arm.method!r} rejects these values: {type(exc).__name__}: {exc}"
            )
        space_path = resolve_space_path(arm.space, arm.method, base_dir)
        if space_path is None:
            continue
        try:
            resolved, space_located = _cached_space(space_path, space_cache)
        except SpecError as exc:
            if arm.space is not None and not _exists(space_path):
                issue(
                    ("arms", arm_name, "space"),
                    f"search space {_clip(arm.space)} not found"
                    " (looked next to the hypothesis and in the shipped search_spaces/)",
                )
            elif arm.space is not None and all(i.line is None for i in exc.issues):  # a folder, unreadable...
                issue(("arms", arm_name, "space"), f"search space {_clip(arm.space)}: {exc.issues[0].message}")
            else:
                issues.extend(exc.issues)
            continue
        spaces[arm_name] = resolved
        space = resolved.space
        if space.method is not None and space.method != arm.method:
            issue(
                ("arms", arm_name, "space"),
                f"{space_path.name} is the space of method {space.method!r}, not {arm.method!r}",
            )
        for key in space.params:
            if key not in accepted:
                issues.append(
                    SpecIssue(
                        str(space_path),
                        space_located.line_of(("params", key)),
                        f"params.{key}",
                        _not_accepted(key, arm.method, accepted),
                    )
                )

    trial_metric_names = set().union(*arm_metrics.values()) if arm_metrics else set()
    for name in spec.search.objectives:
        if name not in trial_metric_names and arm_metrics:
            issue(("search", "objectives", name), _unknown_metric(name, trial_metric_names))
        elif name.startswith("test_"):
            issue(
                ("search", "objectives", name), "the search must not select on the held-out split; use a val_ metric"
            )
    for index, text in enumerate(spec.search.constraints):
        # "all: m <= x" and "arm: m <= x" scope a constraint (orchestrator.plan.constraints_for)
        scope, sep, rest = text.partition(":")
        scoped = bool(sep) and scope.strip().isidentifier()
        if scoped and scope.strip() != "all" and scope.strip() not in spec.arms:
            issue(
                ("search", "constraints", index),
                f"{_clip(text)} is scoped to {_clip(scope.strip())},"
                f" which is neither 'all' nor an arm ({', '.join(spec.arms)})",
            )
            continue
        try:
            constraint = parse_constraint(rest if scoped else text)
        except ValueError as exc:
            issue(("search", "constraints", index), str(exc))
            continue
        if arm_metrics and constraint.metric not in trial_metric_names:
            issue(("search", "constraints", index), _unknown_metric(constraint.metric, trial_metric_names))
    _check_sampler(spec, spaces, issue)
    _check_precision(spec, issue)
    _check_confirm_split(spec, issue)
    _check_confirm_rounds(spec, issue)

    issues.extend(check_claims(spec.expected, ("expected",), spec, arm_metrics, located))
    return issues, spaces


def _check_requirements(arm_name: str, method: str, requires: tuple[Requirement, ...], issue: Any) -> None:
    """An arm whose method needs a package that is not installed would fail every trial
    with the same ImportError; refuse it here, with the command that installs it."""
    for requirement in requires:
        if not requirement.is_installed():
            issue(
                ("arms", arm_name, "method"),
                f"method {method!r} needs {requirement.module}, which is not installed: {requirement.install_command}",
            )


def _check_fixed_training(arm_name: str, fixed: dict[str, Any], issue: Any) -> None:
    """Training values an arm fixes (lr, precision...) obey the same rules as ``training:``."""
    for key, value in fixed.items():
        try:
            TrainingSpec(**{key: value})
        except ValidationError as exc:
            issue(("arms", arm_name, "fixed", key), exc.errors()[0]["msg"])


def _check_confirm_rounds(spec: Hypothesis, issue: Any) -> None:
    """Sequential confirmation adds rounds of ``seeds`` seeds up to ``max_seeds``: a cap
    below the first round would silently cut the first look short."""
    confirm = spec.confirm
    if confirm.max_seeds is not None and confirm.max_seeds < confirm.seeds:
        issue(
            ("confirm", "max_seeds"),
            f"max_seeds ({confirm.max_seeds}) is below seeds ({confirm.seeds}), the first round's "
            "seeds per arm; use max_seeds >= seeds (or leave it out for one look)",
        )


def _check_confirm_split(spec: Hypothesis, issue: Any) -> None:
    """Judgement on held-out data only: the search selects every arm's best
    configuration on the validation split (objectives are ``val_*``), so confirmation
    runs evaluated there would report the selection's optimism as a finding."""
    if spec.confirm.split == "validation":
        issue(
            ("confirm", "split"),
            "the search selects on the validation split (objectives "
            f"{', '.join(spec.search.objectives)}), so it cannot also judge the claims; use test (for hub "
            "datasets whose test labels are hidden, e.g. GLUE, test is the hub's validation split)",
        )


def _check_precision(spec: Hypothesis, issue: Any) -> None:
    """fp16 autocast is for GPUs (``orchestrator.trial.precision``): refuse it for CPU trials."""
    if spec.search.resources_per_trial.gpu > 0:
        return
    message = (
        "fp16 needs a GPU and search.resources_per_trial.gpu is 0; use auto (bf16 where the CPU has it), bf16 or fp32"
    )
    if spec.training.precision == "fp16":
        issue(("training", "precision"), message)
    for arm_name, arm in spec.arms.items():
        if arm.fixed.get("precision") == "fp16":
            issue(("arms", arm_name, "fixed", "precision"), message)


def _check_sampler(spec: Hypothesis, spaces: dict[str, ResolvedSpace], issue: Any) -> None:
    """What ``orchestrator.plan.make_plan`` would otherwise raise as a bare ValueError."""
    from orchestrator.search.registry import SAMPLERS, samplers_for_objectives
    from orchestrator.search.space import DefineByRun

    sampler = SAMPLERS[spec.search.sampler]
    if len(spec.search.objectives) > 1 and not sampler.multi_objective:
        issue(
            ("search", "sampler"),
            f"sampler {sampler.name!r} handles one objective; with {len(spec.search.objectives)} objectives "
            f"use {samplers_for_objectives()}",
        )
    if sampler.grid:
        for arm_name, resolved in spaces.items():
            try:
                DefineByRun(dict(resolved.space.params), spec.arms[arm_name].fixed).grid()
            except ValueError as exc:
                issue(("search", "sampler"), f"arm {arm_name!r}: {exc}")


def check_claims(
    claims: list[str],
    at: tuple[Any, ...],
    spec: Hypothesis,
    arm_metrics: dict[str, dict[str, str]],
    located: LocatedYaml,
) -> list[SpecIssue]:
    from orchestrator.claims import ClaimSyntaxError, parse_claim

    issues = []
    for index, text in enumerate(claims):
        path = (*at, index)
        where = (located.file, located.line_of(path), ".".join(map(str, path)))
        try:
            claim = parse_claim(str(text))
        except ClaimSyntaxError as exc:
            issues.append(SpecIssue(*where, f"{exc.message} (column {exc.column} of {_clip(text)})"))
            continue
        for ref in claim.references():
            if ref.arm not in spec.arms:
                near = difflib.get_close_matches(ref.arm, list(spec.arms), n=1)
                hint = f"; did you mean {near[0]!r}?" if near else f" (arms: {', '.join(spec.arms)})"
                issues.append(SpecIssue(*where, f"claim names unknown arm {ref.arm!r}{hint}"))
            elif ref.arm in arm_metrics and ref.metric not in arm_metrics[ref.arm]:
                issues.append(
                    SpecIssue(*where, f"arm {ref.arm!r}: {_unknown_metric(ref.metric, set(arm_metrics[ref.arm]))}")
                )
    return issues


def _not_accepted(key: str, method: str, accepted: set[str]) -> str:
    near = difflib.get_close_matches(key, sorted(accepted), n=2)
    hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
    return f"method {method!r} has no hyperparameter {key!r}{hint} (see `orchestrate methods`)"


def _unknown_metric(name: str, known: set[str]) -> str:
    near = difflib.get_close_matches(name, sorted(known), n=2)
    hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
    return f"unknown metric {name!r}{hint}"
