"""Turn pydantic's ValidationError into ``FILE:LINE: field: message`` issues."""

from __future__ import annotations

import difflib
import typing

from pydantic import BaseModel, ValidationError

from orchestrator.spec.errors import SpecIssue
from orchestrator.spec.yaml_lines import LocatedYaml


def issues_from_validation(
    exc: ValidationError, located: LocatedYaml, model: type[BaseModel] | None = None
) -> list[SpecIssue]:
    issues = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        message = err["msg"]
        if loc and loc[-1] == "[key]":  # a mapping key of the wrong type, e.g. fixed: {1: 2}
            loc, message = loc[:-1], f"keys must be text: {message}"
        if err["type"] == "extra_forbidden":
            message = "unknown key" + _suggest(loc, model)
        elif err["type"] == "missing":
            message = "required field is missing"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        issues.append(SpecIssue(located.file, located.line_of(loc), ".".join(map(str, loc)), message))
    return issues


def _suggest(loc: tuple, model: type[BaseModel] | None) -> str:
    """Nearest allowed key for a typo, walking the model along ``loc``."""
    if model is None or not loc:
        return ""
    current: type[BaseModel] | None = model
    parts = list(loc[:-1])
    while parts and current is not None:
        field = current.model_fields.get(str(parts.pop(0)))
        annotation = getattr(field, "annotation", None)
        if typing.get_origin(annotation) is dict:  # dict[str, Model]: skip the key
            annotation = typing.get_args(annotation)[1]
            if parts:
                parts.pop(0)
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if current is None:
        return ""
    near = difflib.get_close_matches(str(loc[-1]), list(current.model_fields), n=1) if current else []
    return f"; did you mean {near[0]!r}?" if near else ""
