"""Task types behind one registry, as methods are (``methods.register``).

``get_task_type("image-classification")`` returns the registered type's instance. A
type's module registers its class with ``@register_task_type``; built-in types are
imported on first use. Modules here import no torch at import time, so the spec's
checks can ask a type about its references cheaply.

Adding a type: a module here with a ``TaskType`` subclass (``base.py`` says what it
owns), a line in ``_BUILTIN_MODULES``, and its name in ``TaskSpec.type``'s Literal.
"""

from __future__ import annotations

import importlib

from orchestrator.tasks.types.base import TaskType

__all__ = ["DEFAULT_TASK_TYPE", "TaskType", "get_task_type", "register_task_type", "task_type_names"]

DEFAULT_TASK_TYPE = "sequence-classification"

#: name -> module that registers it.
_BUILTIN_MODULES: dict[str, str] = {
    "sequence-classification": "orchestrator.tasks.types.sequence_classification",
    "image-classification": "orchestrator.tasks.types.image_classification",
    "causal-lm": "orchestrator.tasks.types.causal_lm",
}

_REGISTRY: dict[str, TaskType] = {}


def register_task_type(cls: type[TaskType]) -> type[TaskType]:
    """Class decorator: make an instance of ``cls`` available under ``cls.name``."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and type(existing) is not cls:
        raise ValueError(f"task type {cls.name!r} is registered twice ({type(existing)} and {cls})")
    _REGISTRY[cls.name] = cls()
    return cls


def task_type_names() -> list[str]:
    return sorted(set(_BUILTIN_MODULES) | set(_REGISTRY))


def get_task_type(name: str) -> TaskType:
    """The type registered under ``name``; KeyError for an unknown one (the spec's
    Literal has refused it before anything asks)."""
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        raise KeyError(f"unknown task type {name!r}; known: {', '.join(task_type_names())}")
    return _REGISTRY[name]
