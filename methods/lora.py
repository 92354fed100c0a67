"""LoRA through peft's ``LoraConfig`` (Hu et al., 2021).

y = W0 x + s * B A x with s = alpha / r (alpha / sqrt(r) with rsLoRA). Nothing is
written by hand here: peft ships LoRA, and its variants (DoRA, PiSSA, ...) reuse
``lora_config`` below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from methods import register
from methods.base import REFERENCE_RANK, BuildContext, Method, MethodConfig, linear_shapes

if TYPE_CHECKING:
    from torch import nn


class LoraMethodConfig(MethodConfig):
    r: int = Field(8, ge=1, le=1024, description="LoRA rank r")
    lora_alpha: float = Field(16.0, gt=0, description="scaling numerator: s = alpha / r")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
    use_rslora: bool = Field(False, description="rank-stabilised scaling s = alpha / sqrt(r)")
    target_modules: list[str] | None = Field(
        None, description="module-name suffixes to adapt; default: the task's (query, value for BERT)"
    )


def lora_config(config: LoraMethodConfig, ctx: BuildContext, **extra: Any):
    """A peft ``LoraConfig`` for the task (``ctx.peft_task_type``) from our config.

    The classifier head is trained in full (``modules_to_save``), as in every LoRA
    paper's GLUE setup; its parameters are counted separately as ``head_params``.
    """
    from peft import LoraConfig

    return LoraConfig(
        task_type=ctx.peft_task_type,
        r=config.r,
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]  # peft annotates int; it only divides by it
        lora_dropout=config.lora_dropout,
        use_rslora=config.use_rslora,
        target_modules=list(config.target_modules or ctx.target_modules),
        modules_to_save=list(ctx.head_modules),
        **extra,
    )


@register
class LoRA(Method):
    name = "lora"
    Config = LoraMethodConfig
    config: LoraMethodConfig
    summary = "LoRA (peft): low-rank update B A on the target linear layers"
    metrics: ClassVar[dict[str, str]] = {
        "active_layers": "adapted modules that run for every input (static for LoRA)",
        "total_rank": "sum of ranks over adapted modules",
    }
    #: Fixed by r and the target modules, as are the engine's counts and FLOPs.
    exact_metrics = Method.exact_metrics | {"active_layers", "total_rank"}

    def build(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        from peft import get_peft_model

        return get_peft_model(model, lora_config(self.config, ctx))

    def analytic_costs(self, model: nn.Module, ctx: BuildContext) -> dict[str, float]:
        """Unmerged LoRA: 2r(d_in+d_out) FLOPs and r(d_in+d_out) parameters per module
        and token; exact (the FLOP test checks it against FlopCounterMode)."""
        shapes = linear_shapes(model, list(self.config.target_modules or ctx.target_modules))
        width = sum(d_in + d_out for _, d_in, d_out in shapes)
        reference = sum(d_in + d_out for _, d_in, d_out in linear_shapes(model, self.reference_target_modules(ctx)))
        return {
            "trainable_params": float(self.config.r * width),
            "flops_ratio": self.config.r * width / (REFERENCE_RANK * reference) if reference else float("nan"),
        }

    def stats(self, model: nn.Module) -> dict[str, float]:
        n_modules = sum(1 for name, _ in model.named_modules() if name.endswith("lora_A.default"))
        return {"active_layers": float(n_modules), "total_rank": float(n_modules * self.config.r)}
