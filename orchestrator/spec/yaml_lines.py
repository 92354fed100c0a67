"""Safe YAML loading that remembers the line of every key and item.

PyYAML's ``safe_load`` drops positions. We compose the node tree once (safe: only
plain scalars, lists and mappings are built; tags such as ``!!python/object`` are
rejected by the SafeLoader) and build both the Python value and a map from each path
(``("arms", "lora", "fixed", "r")``) to its 1-based line. Duplicate keys are errors:
a later key silently winning is how typos hide.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from orchestrator.spec.errors import SpecError, SpecIssue

Path_ = tuple[Any, ...]


class LocatedYaml:
    """A loaded YAML document plus where each of its parts came from."""

    def __init__(self, file: str, value: Any, lines: dict[Path_, int]) -> None:
        self.file = file
        self.value = value
        self.lines = lines

    def line_of(self, path: Path_) -> int | None:
        """Line of ``path``, or of its deepest ancestor that exists in the file."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)


def load_located(text: str, file: str) -> LocatedYaml:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or str(exc)
        raise SpecError([SpecIssue(file, line, "", f"YAML syntax error: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([SpecIssue(file, None, "", f"YAML error: {exc}")]) from None
    if node is None:
        raise SpecError([SpecIssue(file, 1, "", "the file is empty")])
    lines: dict[Path_, int] = {(): node.start_mark.line + 1}
    issues: list[SpecIssue] = []
    value = _build(node, (), lines, issues, file)
    if issues:
        raise SpecError(issues)
    return LocatedYaml(file, value, lines)


_PLAIN_TAGS = {yaml.MappingNode: "tag:yaml.org,2002:map", yaml.SequenceNode: "tag:yaml.org,2002:seq"}


def _build(node: yaml.Node, path: Path_, lines: dict[Path_, int], issues: list[SpecIssue], file: str) -> Any:
    expected_tag = _PLAIN_TAGS.get(type(node))
    if expected_tag is not None and node.tag != expected_tag:
        # e.g. !!python/object/apply on a list: never constructed, always an error
        issues.append(SpecIssue(file, node.start_mark.line + 1, _dotted(path), f"cannot read value: tag {node.tag!r} is not allowed"))
        return None
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                issues.append(SpecIssue(file, key_node.start_mark.line + 1, _dotted(path), "YAML merge keys (<<) are not supported"))
                continue
            key = _scalar(key_node, path, issues, file)
            if isinstance(key, (list, dict)):
                issues.append(SpecIssue(file, key_node.start_mark.line + 1, _dotted(path), "mapping keys must be plain scalars"))
                continue
            if key in out:
                issues.append(SpecIssue(file, key_node.start_mark.line + 1, _dotted(path + (key,)), "duplicate key"))
                continue
            lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _build(value_node, path + (key,), lines, issues, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            items.append(_build(item, path + (index,), lines, issues, file))
        return items
    return _scalar(node, path, issues, file)


def _scalar(node: yaml.Node, path: Path_, issues: list[SpecIssue], file: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        return _build(node, path, {}, issues, file)
    try:
        value = yaml.SafeLoader(" ").construct_object(node)  # plain scalars only (SafeLoader)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        issues.append(SpecIssue(file, node.start_mark.line + 1, _dotted(path), f"cannot read value: {problem}"))
        return None
    # YAML 1.1 reads 1e-3 (no dot) as a string; every researcher means a number.
    if isinstance(value, str) and node.style is None and _EXPONENT_FLOAT.fullmatch(value):
        return float(value)
    return value


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path)
