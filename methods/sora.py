"""SoRA: sparse low-rank adaptation with a proximally thresholded gate (Ding et al., 2023).

Each adapted module gets ``y = W0 x + s * B (g * (A x))`` with a gate ``g`` of length
``r_max`` (``s = alpha / r_max``, fixed). The gate is trained with the other adapter
parameters by the engine's AdamW (in the no-decay group, like every 1-D parameter),
and after every optimizer step it goes through the proximal operator of the L1 norm::

    g <- sign(g) * max(|g| - xi, 0)

which sets gates to exactly 0, something a plain L1 subgradient under Adam never
does (it oscillates around 0). An optional ``l1_weight * mean|g|`` is added to the
loss, as the released code does. At ``finalize`` the ranks whose gate is 0 are removed
(the parameters go, not just their values) and ``g`` is folded into B, so inference
costs ``2 * nnz(g) * (d_in + d_out)`` FLOPs per token and module.

xi and the learning rate are coupled. As in the released ``SparseAdamW``, xi is
subtracted once per optimizer step and is *not* multiplied by the learning rate, while
Adam moves each gate by about ``lr`` per step whatever the gradient's scale. A gate
therefore survives only where the task keeps pushing it away from 0 by more than xi
per step: the ratio xi/lr sets the sparsity, so search xi together with lr, and expect
the threshold to bite harder late in training, when a decaying schedule has shrunk lr
but not xi. ``xi_schedule`` can raise xi over training (SoRA's linear / log-linear /
exponential schedules towards ``xi_max``) to trace a sparsity curve.

The gate-B scale symmetry (g * B = (g/c) * (c B)) is held in check by weight decay
on B (B is a 2-D parameter, so it is in the decay group).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from methods import register
from methods.base import BuildContext, Method, MethodConfig, StepInfo

if TYPE_CHECKING:
    import torch
    from torch import nn


class SoraConfig(MethodConfig):
    r_max: int = Field(8, ge=1, le=256, description="initial rank (gate length) of every adapted module")
    lora_alpha: float = Field(16.0, gt=0, description="scaling numerator: s = alpha / r_max (fixed)")
    xi: float = Field(
        3e-4, ge=0.0, description="proximal threshold subtracted from |g| after every optimizer step (not times lr)"
    )
    xi_schedule: Literal["constant", "linear", "log_linear", "exp_linear"] = Field(
        "constant", description="how xi moves from xi to xi_max over training"
    )
    xi_max: float | None = Field(None, ge=0.0, description="final xi of a non-constant schedule")
    l1_weight: float = Field(1e-3, ge=0.0, description="weight of the mean |g| term added to the loss")
    gate_init: Literal["randn", "ones"] = Field("randn", description="gate initialisation (released code: randn)")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
    merge: bool = Field(False, description="after pruning, merge the update into the base weights (0 extra FLOPs)")
    target_modules: list[str] | None = Field(
        None, description="module-name suffixes to adapt; default: the task's (query, value for BERT)"
    )

    @model_validator(mode="after")
    def _schedule_needs_target(self) -> SoraConfig:
        if self.xi_schedule != "constant" and self.xi_max is None:
            raise ValueError(f"xi_schedule={self.xi_schedule!r} needs xi_max")
        if self.xi_schedule in ("log_linear", "exp_linear") and self.xi <= 0:
            raise ValueError(f"xi_schedule={self.xi_schedule!r} needs xi > 0")
        return self


def xi_at(config: SoraConfig, progress: float) -> float:
    """The threshold at a fraction ``progress`` of training (SoRA's lambda schedules)."""
    start, end = config.xi, config.xi_max if config.xi_max is not None else config.xi
    p = min(1.0, max(0.0, progress))
    if config.xi_schedule == "linear":
        return start + (end - start) * p
    if config.xi_schedule == "log_linear":  # log of a linear ramp between exp(start) and exp(end)
        return math.log(math.exp(start) + (math.exp(end) - math.exp(start)) * p)
    if config.xi_schedule == "exp_linear":  # geometric ramp
        return math.exp(math.log(start) + (math.log(end) - math.log(start)) * p)
    return start


def soft_threshold_(gate: torch.Tensor, xi: float) -> None:
    """In place: g <- sign(g) * max(|g| - xi, 0), the proximal step of xi * |g|_1."""
    import torch

    with torch.no_grad():
        gate.copy_(torch.sign(gate) * torch.clamp(gate.abs() - xi, min=0.0))


@register
class SoRA(Method):
    name = "sora"
    Config = SoraConfig
    config: SoraConfig
    summary = "SoRA: LoRA with a per-rank gate, proximal soft-thresholding, zero ranks dropped at the end"
    metrics: ClassVar[dict[str, str]] = {
        "total_rank": "sum over adapted modules of the ranks kept (non-zero gates) after finalize",
        "trainable_params_final": "stored adapter parameters after pruning: sum of kept_rank * (d_in + d_out)",
        "kept_modules": "adapted modules that keep at least one rank",
        "gate_density": "fraction of gates that are non-zero at the end of training",
    }
    #: The gates decide which ranks stay, hence the FLOPs and every kept count; the
    #: parameters trained (all r_max ranks) are fixed.
    exact_metrics = frozenset({"trainable_params", "head_params"})

    def __init__(self, config: SoraConfig | None = None) -> None:
        super().__init__(config)
        self._final: dict[str, float] | None = None

    def build(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        from methods._masked_lora import inject_masked_lora, seeded_generator

        generator = seeded_generator(ctx.seed)
        inject_masked_lora(
            model, ctx, self.config, generator, scale_by="r_max", gate=True, gate_init=self.config.gate_init
        )
        return model

    @staticmethod
    def _layers(model: nn.Module):
        from methods._injection import adapters
        from methods._masked_lora import MaskedLoraLinear

        return list(adapters(model, MaskedLoraLinear))

    def _gates(self, model: nn.Module) -> list[torch.Tensor]:
        return [layer.lora_gate for _, layer in self._layers(model) if layer.lora_gate is not None]

    def extra_loss(self, model: nn.Module, step: StepInfo) -> torch.Tensor | None:
        import torch

        gates = self._gates(model)
        if self.config.l1_weight == 0 or not gates:
            return None
        return self.config.l1_weight * torch.cat([g.abs() for g in gates]).mean()

    def after_optimizer_step(self, model: nn.Module, step: StepInfo) -> None:
        xi = xi_at(self.config, step.progress)
        if xi > 0:
            for gate in self._gates(model):
                soft_threshold_(gate, xi)

    def finalize(self, model: nn.Module) -> nn.Module:
        """Drop the ranks whose gate is 0, fold g into B; merge if asked. Outputs unchanged."""
        from methods._injection import replace_module

        gates = self._gates(model)
        total_gates = sum(g.numel() for g in gates)
        nonzero = sum(int((g != 0).sum()) for g in gates)
        total_rank = params = kept = 0
        for name, layer in self._layers(model):
            if layer.lora_gate is not None:
                layer.keep_ranks(layer.lora_gate.detach() != 0)
            total_rank += layer.rank
            params += layer.active_params()
            kept += int(layer.rank > 0)
            if layer.rank == 0 or self.config.merge:
                replace_module(model, name, layer.merged())
        self._final = {
            "total_rank": float(total_rank),
            "trainable_params_final": float(params),
            "kept_modules": float(kept),
            "gate_density": nonzero / total_gates if total_gates else 0.0,
        }
        return model

    def stats(self, model: nn.Module) -> dict[str, float]:
        if self._final is not None:
            return dict(self._final)
        layers = [layer for _, layer in self._layers(model)]
        ranks = [int((layer.lora_gate != 0).sum()) if layer.lora_gate is not None else layer.rank for layer in layers]
        gates = sum(layer.r_max for layer in layers)
        return {
            "total_rank": float(sum(ranks)),
            "trainable_params_final": float(
                sum(r * (layer.in_features + layer.out_features) for r, layer in zip(ranks, layers, strict=True))
            ),
            "kept_modules": float(sum(1 for r in ranks if r > 0)),
            "gate_density": sum(ranks) / gates if gates else 0.0,
        }

    def write_artifacts(self, model: nn.Module, folder: Path) -> list[Path]:
        from methods._figures import pyplot, save_figure

        plt = pyplot()

        layers = self._layers(model)
        if not layers:  # every module merged or pruned away
            return []
        names = [name.replace("bert.encoder.layer.", "L").replace(".attention.self", "") for name, _ in layers]
        ranks = [layer.rank for _, layer in layers]
        fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(names)), 3))
        ax.bar(range(len(names)), ranks)
        ax.axhline(self.config.r_max, linestyle=":", color="grey", label="r_max")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_ylabel("kept rank")
        ax.set_title("SoRA: ranks kept per module")
        ax.legend(loc="upper right")
        return [save_figure(fig, folder / "sora_ranks.png")]
