"""A method that fails on purpose, for fault-injection tests and demos.

``mode`` picks the fault: ``raise`` (an exception while training), ``nan`` (the loss
becomes NaN), or ``none`` (behaves as LoRA). ``when`` is the optimizer step at
which the fault strikes. It is registered like any method, so a test hypothesis can
name it; it is harmless (it only raises or returns NaN inside its own trial).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from methods import register
from methods.base import BuildContext, StepInfo
from methods.lora import LoRA, LoraMethodConfig

if TYPE_CHECKING:
    import torch
    from torch import nn


class FailingConfig(LoraMethodConfig):
    mode: Literal["raise", "nan", "none"] = Field("raise", description="which fault to inject")
    when: int = Field(0, ge=0, description="optimizer step at which the fault strikes")


@register
class Failing(LoRA):
    name = "failing"
    Config = FailingConfig
    summary = "LoRA that fails on purpose (testing fault handling)"

    def extra_loss(self, model: "nn.Module", step: StepInfo) -> "torch.Tensor | None":
        import torch

        if step.step < self.config.when or self.config.mode == "none":
            return None
        if self.config.mode == "raise":
            raise RuntimeError(f"injected failure at step {step.step}")
        return torch.tensor(float("nan"))
