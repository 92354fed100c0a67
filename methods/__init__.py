"""Fine-tuning methods, one module (or folder) each, behind one registry.

``get_method("lora")`` returns the class registered under that name. Built-in methods
are imported on first use, so listing or validating does not pay for every method's
dependencies. Third-party methods register through the ``orchestrate.methods`` entry
point group (``name = "package.module:Class"``); a spec can only *name* a registered
method, never give an import path, so nothing from a spec is ever imported as code.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from methods.base import BuildContext, Method, MethodConfig, StepInfo

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "BuildContext",
    "Method",
    "MethodConfig",
    "StepInfo",
    "UnknownMethodError",
    "available_methods",
    "get_method",
    "register",
]

#: name -> module that registers it. Add a line here when you add a method.
_BUILTIN_MODULES: dict[str, str] = {
    "full": "methods.full",
    "lora": "methods.lora",
    "failing": "methods.failing",
    # routed / gated (issue 3)
    "galora": "methods.galora",
    "cogalora": "methods.cogalora",
    "radlora": "methods.radlora",
    # shipped by peft (issue 4)
    "adalora": "methods.adalora",
    "adamss": "methods.adamss",
    "qlora_adalora": "methods.qlora_adalora",
    "dora": "methods.dora",
    "pissa": "methods.pissa",
    "lora_ga": "methods.lora_ga",
    # written here because no library ships them (issue 5)
    "snell": "methods.snell",
    "plateau_lora": "methods.plateau_lora",
    "sora": "methods.sora",
    "dylora": "methods.dylora",
}

_REGISTRY: dict[str, type[Method]] = {}


class UnknownMethodError(KeyError):
    """Raised for a method name nobody registered; carries close matches."""

    def __init__(self, name: str, suggestions: list[str]) -> None:
        self.name = name
        self.suggestions = suggestions
        hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"unknown method {name!r}{hint}")

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return self.args[0]


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"method name {cls.name!r} is registered twice ({existing} and {cls})")
    _REGISTRY[cls.name] = cls
    return cls


def _plugin_entry_points() -> dict[str, Callable[[], type[Method]]]:
    """name -> loader of the plug-in's class; the entry point group's contract is a
    ``Method`` subclass (``register`` reads its ``name``)."""
    return {ep.name: ep.load for ep in entry_points(group="orchestrate.methods")}


def available_methods() -> list[str]:
    """Every name a spec may use, built-in and plug-in, sorted."""
    names = set(_BUILTIN_MODULES) | set(_REGISTRY) | set(_plugin_entry_points())
    return sorted(n for n in names if not n.startswith("_"))


def get_method(name: str) -> type[Method]:
    """The method class registered under ``name``; raises UnknownMethodError."""
    if name not in _REGISTRY:
        if name in _BUILTIN_MODULES:
            importlib.import_module(_BUILTIN_MODULES[name])
        else:
            plugins = _plugin_entry_points()
            if name in plugins:
                register(plugins[name]())
    if name not in _REGISTRY:
        raise UnknownMethodError(name, difflib.get_close_matches(name, available_methods(), n=3, cutoff=0.5))
    return _REGISTRY[name]
