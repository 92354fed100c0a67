"""Safe YAML loading that remembers the line of every key and item.

PyYAML's ``safe_load`` drops positions. We compose the node tree once (safe: only
plain scalars, lists and mappings are built; tags such as ``!!python/object`` are
rejected by the SafeLoader) and build both the Python value and a map from each path
(``("arms", "lora", "fixed", "r")``) to its 1-based line. Duplicate keys are errors:
a later key silently winning is how typos hide.

Hostile or broken files end as a ``SpecError`` too, never as another exception
(found by fuzzing, tests/test_fuzz_spec.py): files over ``MAX_FILE_BYTES`` or that are
not regular files (``/dev/zero``) are not read, bytes that are not UTF-8 are reported
with their line, and anchors/aliases cannot expand past ``MAX_DEPTH`` levels or
``MAX_VALUES`` values (recursive aliases, "billion laughs").
"""

from __future__ import annotations

import bisect
import re
from pathlib import Path
from typing import Any

import yaml

from orchestrator.spec.errors import SpecError, SpecIssue

Path_ = tuple[Any, ...]

#: A hypothesis or search space is a few KiB; PyYAML reads ~0.4 MB/s here.
MAX_FILE_BYTES = 1 << 20
#: Real files nest about 5 levels; PyYAML's own recursion fails near 490.
MAX_DEPTH = 50
#: Values built from one file, aliases expanded (a 1 MiB file of "[1,1,...]" is ~500k).
MAX_VALUES = 100_000


def read_user_file(path: Path, what: str = "") -> str:
    """A user's YAML file as text; every way of failing is a ``SpecError``.

    ``what`` prefixes the messages ("search space" -> "cannot read search space: ...").
    """
    file = str(path)
    prefix = f"cannot read {what}: " if what else "cannot read: "
    problem = None
    try:
        if not path.exists():
            problem = "no such file"
        elif not path.is_file():  # a folder, /dev/zero, a FIFO: never read
            problem = prefix + "not a regular file"
        else:
            with path.open("rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
    except ValueError:  # a NUL byte in the path
        problem = prefix + "the path contains a NUL byte"
    except OSError as exc:
        problem = prefix + (exc.strerror or str(exc))
    if problem:
        raise SpecError([SpecIssue(file, None, "", problem)])
    if len(data) > MAX_FILE_BYTES:
        raise SpecError(
            [SpecIssue(file, 1, "", f"the file is larger than {MAX_FILE_BYTES >> 20} MiB; is it the right file?")]
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(
            [SpecIssue(file, line, "", f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8")]
        ) from None


class LocatedYaml:
    """A loaded YAML document plus where each of its parts came from."""

    def __init__(self, file: str, value: Any, lines: dict[Path_, int]) -> None:
        self.file = file
        self.value = value
        self.lines = lines
        self._by_text: dict[tuple[str, ...], int] | None = None

    def line_of(self, path: Path_) -> int | None:
        """Line of ``path``, or of its deepest ancestor that exists in the file.
        Pydantic writes a non-text key as text (``None`` -> ``'None'``), so a part
        that is not a key is also looked up by its text."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            if self._by_text is None:
                self._by_text = {tuple(map(str, known)): line for known, line in reversed(self.lines.items())}
            line = self._by_text.get(tuple(map(str, path)))
            if line is not None:
                return line
            path = path[:-1]
        return self.lines.get((), 1)


def load_located(text: str, file: str) -> LocatedYaml:
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # checks for control characters here already
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise SpecError([_syntax_issue(exc, text, file)]) from None
    except yaml.reader.ReaderError as exc:  # control characters; has a position, not a mark
        line = text[: exc.position].count("\n") + 1
        raise SpecError(
            [
                SpecIssue(
                    file, line, "", f"YAML syntax error: character #x{exc.character:04x} is not allowed ({exc.reason})"
                )
            ]
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError([SpecIssue(file, None, "", f"YAML error: {exc}")]) from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        depth_line = _line_at(text, loader.index) if loader else None
        raise SpecError([SpecIssue(file, depth_line, "", f"YAML nested more than {MAX_DEPTH} levels deep")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        raise SpecError([SpecIssue(file, 1, "", "the file is empty")])
    budget = _Budget(text)
    lines: dict[Path_, int] = {(): budget.line(node.start_mark)}
    issues: list[SpecIssue] = []
    value = _build(node, (), lines, issues, file, budget)
    if issues:
        raise SpecError(issues)
    return LocatedYaml(file, value, lines)


def _syntax_issue(exc: yaml.MarkedYAMLError, text: str, file: str) -> SpecIssue:
    """The problem's line; but an unclosed quote or bracket is only noticed at the end
    of the file, so then the line where the construct started (the context)."""
    problem, context = exc.problem_mark, exc.context_mark
    mark = problem or context
    message = f"YAML syntax error: {exc.problem or exc.context or 'unreadable YAML'}"
    if problem and context and problem.index >= len(text.rstrip()):
        mark = context
    if context and exc.context and mark is not None and mark is not context and context.line != mark.line:
        message += f" ({exc.context} on line {_line_at(text, context.index)})"
    elif context and exc.context and mark is context and problem:
        message += f" ({exc.context})"
    return SpecIssue(file, _line_at(text, mark.index) if mark else None, "", message)


def _line_at(text: str, index: int) -> int:
    """1-based line of a character, counting "\n" only: PyYAML's own line numbers also
    break at \r, U+0085, U+2028 and U+2029 (a pasted line separator shifted every line
    after it), while editors, grep -n and compilers count newlines."""
    return text.count("\n", 0, index) + 1


class _Budget:
    """Guards ``_build`` against alias tricks: nodes on the current path (a recursive
    alias refers to one of them), and the number of values built (aliases expand).
    Also turns marks into newline-counted lines (see ``_line_at``)."""

    def __init__(self, text: str) -> None:
        self.values = 0
        self.active: set[int] = set()
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.constructor = yaml.constructor.SafeConstructor()  # plain scalars only

    def line(self, mark: yaml.Mark) -> int:
        return bisect.bisect_left(self.newlines, mark.index) + 1


_PLAIN_TAGS: dict[type[yaml.Node], str] = {
    yaml.MappingNode: "tag:yaml.org,2002:map",
    yaml.SequenceNode: "tag:yaml.org,2002:seq",
}


def _build(
    node: yaml.Node, path: Path_, lines: dict[Path_, int], issues: list[SpecIssue], file: str, budget: _Budget
) -> Any:
    if id(node) in budget.active:
        issues.append(
            SpecIssue(
                file,
                budget.line(node.start_mark),
                _dotted(path),
                "a YAML alias refers to a value that contains it (recursive alias)",
            )
        )
        return None
    if len(path) > MAX_DEPTH:
        issues.append(SpecIssue(file, *_nearest_key(path, lines), f"YAML nested more than {MAX_DEPTH} levels deep"))
        return None
    budget.values += 1
    if budget.values > MAX_VALUES:
        if budget.values == MAX_VALUES + 1:  # report once
            issues.append(
                SpecIssue(
                    file, *_nearest_key(path, lines), f"more than {MAX_VALUES} values once YAML aliases are expanded"
                )
            )
        return None
    budget.active.add(id(node))
    try:
        return _build_node(node, path, lines, issues, file, budget)
    finally:
        budget.active.discard(id(node))


def _build_node(
    node: yaml.Node, path: Path_, lines: dict[Path_, int], issues: list[SpecIssue], file: str, budget: _Budget
) -> Any:
    expected_tag = _PLAIN_TAGS.get(type(node))
    if expected_tag is not None and node.tag != expected_tag:
        # e.g. !!python/object/apply on a list: never constructed, always an error
        issues.append(
            SpecIssue(
                file,
                budget.line(node.start_mark),
                _dotted(path),
                f"cannot read value: tag {node.tag!r} is not allowed",
            )
        )
        return None
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                issues.append(
                    SpecIssue(
                        file, budget.line(key_node.start_mark), _dotted(path), "YAML merge keys (<<) are not supported"
                    )
                )
                continue
            key = _scalar(key_node, path, issues, file, budget)
            if isinstance(key, (list, dict)):
                issues.append(
                    SpecIssue(
                        file, budget.line(key_node.start_mark), _dotted(path), "mapping keys must be plain scalars"
                    )
                )
                continue
            if key in out:
                issues.append(
                    SpecIssue(file, budget.line(key_node.start_mark), _dotted(path + (key,)), "duplicate key")
                )
                continue
            lines[path + (key,)] = budget.line(key_node.start_mark)
            out[key] = _build(value_node, path + (key,), lines, issues, file, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            lines[path + (index,)] = budget.line(item.start_mark)
            items.append(_build(item, path + (index,), lines, issues, file, budget))
        return items
    return _scalar(node, path, issues, file, budget)


def _scalar(node: yaml.Node, path: Path_, issues: list[SpecIssue], file: str, budget: _Budget) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        return _build(node, path, {}, issues, file, budget)
    try:
        value = budget.constructor.construct_object(node)
    except Exception as exc:
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        issues.append(SpecIssue(file, budget.line(node.start_mark), _dotted(path), f"cannot read value: {problem}"))
        return None
    # YAML 1.1 reads 1e-3 (no dot) as a string; every researcher means a number.
    if isinstance(value, str) and node.style is None and _EXPONENT_FLOAT.fullmatch(value):
        return float(value)
    return value


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _nearest_key(path: Path_, lines: dict[Path_, int]) -> tuple[int | None, str]:
    """Line and field of the innermost mapping key above ``path`` (an alias's items
    carry the line of its anchor, not of where it is used)."""
    for end in range(len(path), 0, -1):
        if isinstance(path[end - 1], str) and path[:end] in lines:
            return lines[path[:end]], _dotted(path[:end])
    return lines.get((), 1), ""


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path)
