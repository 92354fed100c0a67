"""DoRA through peft's ``use_dora=True`` (Liu et al., 2024; METHODS.md section 7).

W' = m * (W0 + s B A) / ||W0 + s B A||_row: LoRA's update on the direction, plus a
trainable magnitude vector m (d_out per module, initialised to the row norms). The norm
is recomputed on every forward call (about 2 r d_in d_out FLOPs per call, counted by the
FLOP meter since it is a matmul), so unmerged DoRA costs more than LoRA at the same r.
Parameters: r (d_in + d_out) + d_out per module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from methods import register
from methods._peft_common import MEMORY_METRICS, memory_stats
from methods.base import BuildContext
from methods.lora import LoRA, LoraMethodConfig, lora_config

if TYPE_CHECKING:
    from torch import nn


class DoraConfig(LoraMethodConfig):
    """LoRA's hyperparameters; DoRA adds none."""


@register
class DoRA(LoRA):
    name = "dora"
    Config = DoraConfig
    config: DoraConfig
    summary = "DoRA (peft): LoRA on the weight direction plus a trained magnitude vector"
    metrics: ClassVar[dict[str, str]] = {**LoRA.metrics, **MEMORY_METRICS}
    #: LoRA's, and the bytes of tensors whose shapes the configuration fixes.
    exact_metrics = LoRA.exact_metrics | set(MEMORY_METRICS)

    def build(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        from peft import get_peft_model

        return get_peft_model(model, lora_config(self.config, ctx, use_dora=True))

    def stats(self, model: nn.Module) -> dict[str, float]:
        return {**super().stats(model), **memory_stats(model)}
