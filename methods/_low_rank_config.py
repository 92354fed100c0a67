"""Hyperparameters the hand-written gated and routed LoRA methods share.

``LowRankConfig`` is their base, as peft's ``AdaLoraConfig(LoraConfig)``: galora and
cogalora add their own fields to its ``r`` and ``lora_alpha``. ``target_modules`` is a
type rather than a base-class field because pydantic lists a base's fields first and
``orchestrate methods`` shows them in that order: each method keeps it last.

Example::

    class MyConfig(LowRankConfig):
        lam: float = Field(0.1, ge=0.0, description="weight of the penalty")
        target_modules: TargetModules = None
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from methods.base import MethodConfig


def parse_module_list(value: Any) -> list[str] | None:
    """``target_modules`` as a list; a comma-separated string (what a categorical
    search-space choice can hold) is split: ``"query,value"`` -> ``["query", "value"]``."""
    if value is None or isinstance(value, list):
        return value
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return list(value)


#: Module-name suffixes to adapt, from a list or a ``"query,value"`` string; None: the task's.
TargetModules = Annotated[
    list[str] | None,
    BeforeValidator(parse_module_list),
    Field(description="module-name suffixes to adapt (a list, or 'query,value'); default: the task's"),
]


class LowRankConfig(MethodConfig):
    """A LoRA rank and scaling numerator, s = lora_alpha / r, for every adapted module."""

    r: int = Field(8, ge=1, le=256, description="LoRA rank of every module")
    lora_alpha: float = Field(16.0, gt=0, description="scaling numerator: s = alpha / r")
