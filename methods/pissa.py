"""PiSSA through peft's ``init_lora_weights="pissa..."`` (Meng et al., 2024; METHODS.md section 7).

LoRA initialised from the principal singular triplets of W0: B = U_r sqrt(S_r),
A = sqrt(S_r) V_r^T (peft divides by the scale s), and the frozen base becomes the
residual W_res = W0 - s B A, so the model is unchanged at step 0 but trains the
principal directions. With ``niter`` set, peft uses a fast randomized SVD with that
many subspace iterations (``pissa_niter_k``); ``niter=None`` runs the full SVD.
Same parameters and FLOPs as LoRA. The base weights differ from the original model, so
exporting an adapter for the original W0 needs peft's conversion on save.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from methods import register
from methods._peft_common import MEMORY_METRICS, memory_stats
from methods.base import BuildContext
from methods.lora import LoRA, LoraMethodConfig, lora_config

if TYPE_CHECKING:
    from torch import nn


class PissaConfig(LoraMethodConfig):
    niter: int | None = Field(
        4, ge=1, le=64, description="randomized-SVD subspace iterations (pissa_niter_k); None = full SVD"
    )


@register
class PiSSA(LoRA):
    name = "pissa"
    Config = PissaConfig
    config: PissaConfig
    summary = "PiSSA (peft): LoRA initialised from W0's principal singular vectors, residual frozen"
    metrics: ClassVar[dict[str, str]] = {**LoRA.metrics, **MEMORY_METRICS}
    #: LoRA's, and the bytes of tensors whose shapes the configuration fixes.
    exact_metrics = LoRA.exact_metrics | set(MEMORY_METRICS)

    def build(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        from peft import get_peft_model

        init = "pissa" if self.config.niter is None else f"pissa_niter_{self.config.niter}"
        return get_peft_model(model, lora_config(self.config, ctx, init_lora_weights=init))

    def stats(self, model: nn.Module) -> dict[str, float]:
        return {**super().stats(model), **memory_stats(model)}
