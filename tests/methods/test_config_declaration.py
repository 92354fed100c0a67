"""Each method declares its config class twice: ``Config = XConfig`` (what the engine
builds and validates) and ``config: XConfig`` (what mypy reads inside the method, see
``methods.base.Method``). This keeps the two from drifting apart."""

from __future__ import annotations

import sys

import pytest

import methods


@pytest.mark.parametrize("name", methods.available_methods())
def test_the_annotated_config_is_the_config_the_engine_builds(name):
    method = methods.get_method(name)
    owner = next(cls for cls in method.__mro__ if "config" in vars(cls).get("__annotations__", {}))
    annotation = owner.__annotations__["config"]  # a string: the modules use postponed annotations
    declared = eval(annotation, vars(sys.modules[owner.__module__])) if isinstance(annotation, str) else annotation
    assert declared is method.Config, (name, owner.__name__, annotation, method.Config)
