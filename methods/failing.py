"""A method that fails on purpose, for fault-injection tests and demos.

``mode`` picks the fault, struck at optimizer step ``when``:

- ``raise``: an exception while training; ``nan``: the loss becomes NaN;
- ``hang``: an endless loop in Python inside the step (the watchdog interrupts it);
- ``hang_native``: a blocking call that Python cannot interrupt (the watchdog ends
  the worker);
- ``memory``: holds ``hog_mb`` more MB on every step (``search.trial_memory_mb``);
- ``die_once``: the worker process dies the first time (a lost node, for Ray Tune's
  retries); ``marker`` is the file that remembers the first time;
- ``none``: behaves as LoRA.

It is registered like any method, so a test hypothesis can name it; every fault stays
inside its own trial.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from methods import register
from methods.base import StepInfo
from methods.lora import LoRA, LoraMethodConfig

if TYPE_CHECKING:
    import torch
    from torch import nn


class FailingConfig(LoraMethodConfig):
    mode: Literal["raise", "nan", "hang", "hang_native", "memory", "die_once", "none"] = Field(
        "raise", description="which fault to inject"
    )
    when: int = Field(0, ge=0, description="optimizer step at which the fault strikes")
    hog_mb: int = Field(256, ge=1, description="memory mode: MB held per step")
    marker: str = Field("", description="die_once mode: file whose absence means 'first attempt'")


@register
class Failing(LoRA):
    name = "failing"
    Config = FailingConfig
    config: FailingConfig
    summary = "LoRA that fails on purpose (testing fault handling)"

    def extra_loss(self, model: nn.Module, step: StepInfo) -> torch.Tensor | None:
        import torch

        mode = self.config.mode
        if step.step < self.config.when or mode == "none":
            return None
        if mode == "raise":
            raise RuntimeError(f"injected failure at step {step.step}")
        if mode == "hang":
            while True:  # interruptible: Python code runs
                sum(range(1000))
        if mode == "hang_native":
            time.sleep(10**6)  # one C call: only ending the process stops it
        if mode == "memory":
            hog = self.__dict__.setdefault("_hog", [])
            hog.append(torch.ones(self.config.hog_mb * 2**18))  # float32: 4 bytes each, written so it is resident
            return None
        if mode == "die_once":
            if not self.config.marker:
                raise ValueError("mode die_once needs `marker`: the file that remembers the first attempt")
            marker = Path(self.config.marker)
            if not marker.exists():
                marker.write_text("died once")
                os._exit(1)
            return None
        return torch.tensor(float("nan"))
