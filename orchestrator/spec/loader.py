"""Load a hypothesis file: YAML with lines → pydantic → profile → cross checks.

``load_hypothesis(path, profile)`` is the whole Spec stage: it returns a ``LoadedSpec``
or raises ``SpecError`` with every problem found. It never starts Ray or MLflow. It
also reads the local data files (``csv:`` / ``jsonl:``) the file and its profiles name
and checks them (``orchestrator.tasks.data_checks``), so bad data stops ``validate``,
``plan`` and ``run`` here, at exit 2, before anything started.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator.spec.checks import ResolvedSpace, check_hypothesis
from orchestrator.spec.errors import SpecError, SpecIssue
from orchestrator.spec.models import Hypothesis, TaskSpec
from orchestrator.spec.pydantic_errors import issues_from_validation
from orchestrator.spec.yaml_lines import LocatedYaml, load_located, read_user_file
from orchestrator.tasks.types import get_task_type

DEFAULT_PROFILE = "default"


@dataclass(frozen=True)
class LoadedSpec:
    """A validated hypothesis with one profile applied, plus where it came from."""

    path: Path
    text: str
    sha256: str
    profile: str
    hypothesis: Hypothesis
    spaces: dict[str, ResolvedSpace] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def load_hypothesis(
    path: str | Path, profile: str | None = None, check_all_profiles: bool = True, check_requirements: bool = True
) -> LoadedSpec:
    path = Path(path)
    file = str(path)
    text = read_user_file(path)  # SpecError: missing, unreadable, too large, not UTF-8
    located = load_located(text, file)
    if not isinstance(located.value, dict):
        raise SpecError(
            [
                SpecIssue(
                    file, located.line_of(()), "", "a hypothesis must be a YAML mapping (name:, statement:, arms: ...)"
                )
            ]
        )

    base = _validate(located.value, located)
    space_cache: dict[str, Any] = {}
    issues, spaces = check_hypothesis(base, located, path.parent, space_cache, check_requirements)
    wanted = profile or DEFAULT_PROFILE
    if wanted != DEFAULT_PROFILE and wanted not in base.profiles:
        issues.append(
            SpecIssue(
                file,
                located.line_of(("profiles",)),
                "profiles",
                f"no profile {wanted!r}; this file has: {', '.join(['default', *base.profiles])}",
            )
        )
    chosen: Hypothesis = base
    chosen_spaces = spaces
    checked: list[tuple[Hypothesis, LocatedYaml]] = [(base, located)]
    for name in base.profiles:
        if name != wanted and not check_all_profiles:
            continue
        try:
            merged_value, merged_located = apply_profile(located, name)
            profiled = _validate(merged_value, merged_located)
            profile_issues, profile_spaces = check_hypothesis(
                profiled, merged_located, path.parent, space_cache, check_requirements
            )
            issues.extend(profile_issues)
            checked.append((profiled, merged_located))
        except SpecError as exc:
            issues.extend(exc.issues)
            continue
        if name == wanted:
            chosen, chosen_spaces = profiled, profile_spaces
    if check_requirements:  # what training needs; re-judging reads no data
        issues.extend(_data_issues(checked, path.parent))
    if issues:
        raise SpecError(list(dict.fromkeys(issues)))
    return LoadedSpec(path, text, hashlib.sha256(text.encode()).hexdigest(), wanted, chosen, chosen_spaces)


def _data_issues(checked: list[tuple[Hypothesis, LocatedYaml]], base_dir: Path) -> list[SpecIssue]:
    """Each task's local data, checked by its type (a hypothesis and each profile)."""
    by_type: dict[str, list[tuple[TaskSpec, LocatedYaml]]] = {}
    for hypothesis, lines in checked:
        by_type.setdefault(hypothesis.task.type, []).append((hypothesis.task, lines))
    issues: list[SpecIssue] = []
    for name, tasks in by_type.items():
        issues += get_task_type(name).data_file_issues(tasks, base_dir)
    return issues


def _validate(value: dict[str, Any], located: LocatedYaml) -> Hypothesis:
    try:
        return Hypothesis.model_validate(value)
    except ValidationError as exc:
        raise SpecError(issues_from_validation(exc, located, Hypothesis)) from None


def apply_profile(located: LocatedYaml, name: str) -> tuple[dict[str, Any], LocatedYaml]:
    """Deep-merge ``profiles[name]`` over the file; lists are replaced, and a key
    ending in ``+`` (``expected+``) appends to the list instead. Lines of overridden
    keys point into the profile, so an error in a profile is reported there.

    One exception: a profile whose ``task`` names another ``task.type`` than the file's
    replaces the whole ``task`` (a text task's ``max_length`` means nothing to an image
    task, and the image type refuses it), so e.g. a paper profile can move a hypothesis
    from a text proxy to the images its source measured on."""
    value = copy.deepcopy(located.value)
    overrides = value.get("profiles", {}).get(name) or {}
    lines = dict(located.lines)
    prefix = ("profiles", name)
    if not isinstance(overrides, dict):
        raise SpecError(
            [
                SpecIssue(
                    located.file,
                    located.line_of(prefix),
                    f"profiles.{name}",
                    "a profile must be a mapping of overrides",
                )
            ]
        )
    _merge(value, overrides, (), prefix, lines, located.file)
    return value, LocatedYaml(located.file, value, lines)


def _changes_task_type(path: tuple, key: Any, new: dict[str, Any], target: dict[str, Any]) -> bool:
    """The profile's ``task`` names a ``type`` other than the file's (default: text)."""
    from orchestrator.tasks.types import DEFAULT_TASK_TYPE

    return path == () and key == "task" and "type" in new and new["type"] != target[key].get("type", DEFAULT_TASK_TYPE)


def _merge(
    target: dict[str, Any], overrides: dict[str, Any], path: tuple, prefix: tuple, lines: dict, file: str
) -> None:
    for key, new in overrides.items():
        source_path = prefix + path + (key,)
        if isinstance(key, str) and key.endswith("+"):
            real = key[:-1]
            existing = target.get(real) or []
            if not isinstance(existing, list):  # `name+: x` made a list of name's letters
                where = ".".join(map(str, source_path))
                raise SpecError(
                    [
                        SpecIssue(
                            file,
                            lines.get(source_path),
                            where,
                            f"'{key}' appends to a list, but {real!r} is not a list",
                        )
                    ]
                )
            appended = list(existing) + (list(new) if isinstance(new, list) else [new])
            target[real] = appended
            for i in range(len(existing), len(appended)):
                lines[path + (real, i)] = lines.get(source_path + (i - len(existing),), lines.get(source_path, 0))
            continue
        if (
            isinstance(new, dict)
            and isinstance(target.get(key), dict)
            and not _changes_task_type(path, key, new, target)
        ):
            lines[path + (key,)] = lines.get(source_path, lines.get(path + (key,), 0))
            _merge(target[key], new, path + (key,), prefix, lines, file)
            continue
        target[key] = copy.deepcopy(new)
        for sub_path, line in list(lines.items()):
            if sub_path[: len(source_path)] == source_path:
                lines[sub_path[len(prefix) :]] = line
