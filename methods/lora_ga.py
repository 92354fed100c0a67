"""LoRA-GA through peft's ``init_lora_weights="lora_ga"`` (Wang et al., 2024; METHODS.md section 7).

Before the adapters exist, the full gradient G of every target weight is averaged over
a few training batches (peft's ``preprocess_loraga`` with our ``ctx.calibration_batches``,
a forward and backward per batch on the frozen model with labels). An SVD G ~ U S V^T
then initialises A = V^T[:r] and B = U[:, r:2r] S (direction ``ArB2r``), times
d_out^(1/4) / sqrt(gamma) under ``stable`` scaling, and the base becomes W0 - s B A, so the
first step moves like full fine-tuning. Same parameters and FLOPs as LoRA.

Gradient estimation runs in train mode (dropout on), from the freshly initialised head.
It needs full-precision weights: peft raises on quantised models.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from methods import register
from methods._peft_common import MEMORY_METRICS, memory_stats
from methods.base import BuildContext
from methods.lora import LoRA, LoraMethodConfig, lora_config

if TYPE_CHECKING:
    from torch import nn


class LoraGaMethodConfig(LoraMethodConfig):
    direction: Literal["ArBr", "A2rBr", "ArB2r", "random"] = Field(
        "ArB2r", description="which gradient singular vectors go to A and B"
    )
    scale: Literal["stable", "weight_svd", "gd_scale", "unit"] = Field("stable", description="scaling of the init")
    stable_gamma: int = Field(16, ge=1, description="gamma of the stable scaling: B *= d_out^(1/4) / sqrt(gamma)")
    gradient_examples: int = Field(
        64, ge=1, description="training examples whose averaged gradient initialises the adapters"
    )


@register
class LoraGA(LoRA):
    name = "lora_ga"
    Config = LoraGaMethodConfig
    config: LoraGaMethodConfig
    summary = "LoRA-GA (peft): LoRA initialised from the SVD of the full gradient on a few batches"
    metrics: ClassVar[dict[str, str]] = {
        **LoRA.metrics,
        **MEMORY_METRICS,
        "gradient_examples_used": "training examples whose gradients initialised the adapters",
    }
    #: LoRA's and the memory; not ``gradient_examples_used``, which counts the examples of
    #: seeded batches until the quota is met.
    exact_metrics = LoRA.exact_metrics | set(MEMORY_METRICS)

    def __init__(self, config: LoraGaMethodConfig | None = None) -> None:
        super().__init__(config)
        self.gradient_examples_used = 0

    def build(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        from peft import LoraGAConfig, get_peft_model, preprocess_loraga

        calibration_batches = ctx.calibration_batches
        if calibration_batches is None:
            raise ValueError("lora_ga needs training batches to estimate gradients (BuildContext.calibration_batches)")
        cfg = self.config
        peft_config = lora_config(
            cfg,
            ctx,
            init_lora_weights="lora_ga",
            lora_ga_config=LoraGAConfig(direction=cfg.direction, scale=cfg.scale, stable_gamma=cfg.stable_gamma),
        )

        def train_step() -> None:
            seen = 0
            for batch in calibration_batches():
                model(**batch).loss.backward()
                seen += int(batch["labels"].shape[0])
                if seen >= cfg.gradient_examples:
                    break
            self.gradient_examples_used = seen

        with warnings.catch_warnings():
            # peft's counting hooks fire on a frozen input; harmless, and noisy in every trial
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            preprocess_loraga(model, peft_config, train_step)
        if self.gradient_examples_used == 0:
            raise ValueError("lora_ga: calibration_batches yielded no batch")
        return get_peft_model(model, peft_config)

    def stats(self, model: nn.Module) -> dict[str, float]:
        return {
            **super().stats(model),
            **memory_stats(model),
            "gradient_examples_used": float(self.gradient_examples_used),
        }
