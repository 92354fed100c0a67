"""GaLoRA: LoRA with one scalar gate per module, sparsified by L1 and then pruned.

    y = W0 x + g * s * B A x,   s = alpha / r,   g = 1 at init
    objective: L_task + lambda * sum_m |g_m|

The seed's sketch (METHODS.md section 6) penalised |g| with a plain subgradient
under Adam and pruned at |g| < 0.1. Two things break that:

1. **Scale symmetry.** g B A = (g / c)(c B A): the penalty on g alone is dodged by
   moving norm into B, the gates collapse while the function stays the same, and
   the 0.1 threshold says nothing about what a module contributes.
2. **No exact zeros.** Under Adam an L1 subgradient makes gates oscillate around 0.

The fix used here (both parts are needed):

- **Proximal gradient step on g** (as in SoRA), in ``after_optimizer_step``: the gates
  are not in the optimizer; each step does g <- g - eta * dL/dg, then the
  soft-threshold g <- sign(g) max(|g| - eta * lambda, 0). This is plain proximal
  gradient descent on L_task + lambda |g|, so a gate reaches exactly 0 and stays
  there unless |dL/dg| > lambda: lambda has the units of the loss, as in the seed.
- **Equal L2 on A and B**: both factors get the same decoupled weight decay
  ``factor_l2`` (their own optimizer group). Rescaling g -> g/c, B -> cB now costs
  factor_l2 (c^2 - 1)||B||^2, so norm cannot be moved into B for free; with
  lambda |g| + mu (||A||^2 + ||B||^2) the minimum over rescalings is a penalty on the
  product g B A itself, and a small g means a small update.

After training (``finalize``), modules with |g| < ``prune_threshold`` are **removed**:
the wrapper is replaced by its frozen base layer, so their parameters are gone and
nothing is computed for them. The kept modules fold g into B (B <- g B, the gate
disappears), which keeps their outputs exactly. The seed's ``merge()`` neither removed
parameters nor applied the gate (flaw 2). Kept modules stay unmerged, so their FLOPs
count against the unmerged LoRA-r8 reference; merging them would cost 0 extra FLOPs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from methods import register
from methods._routing import (
    block_of,
    find_targets,
    freeze_base_train_head,
    init_lora_factors,
    parse_module_list,
    replace_module,
)
from methods._routing_stats import write_heatmap
from methods.base import BuildContext, Method, MethodConfig, StepInfo


class GaLoraConfig(MethodConfig):
    r: int = Field(8, ge=1, le=256, description="LoRA rank of every module")
    lora_alpha: float = Field(16.0, gt=0, description="scaling numerator: s = alpha / r")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
    lam: float = Field(5e-3, ge=0.0, description="lambda: L1 weight on the gates, in loss units (seed grid 0-1e-2)")
    gate_lr: float = Field(1.0, gt=0.0, description="eta: step size of the proximal gradient step on the gates")
    factor_l2: float = Field(0.1, ge=0.0, description="equal decoupled weight decay on A and B (breaks the scale symmetry)")
    prune_threshold: float = Field(0.1, ge=0.0, description="after training, modules with |g| below this are removed")
    target_modules: list[str] | None = Field(
        None, description="module-name suffixes to adapt (a list, or 'query,value'); default: the task's"
    )

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return parse_module_list(value)


class GaLoRALinear(nn.Module):
    """A frozen ``base_layer`` plus ``galora_A``, ``galora_B`` and the scalar ``galora_gate``
    (None once folded into B)."""

    def __init__(self, base: nn.Linear, r: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.base_layer = base
        self.galora_A, self.galora_B = init_lora_factors(r, base.in_features, base.out_features)
        self.galora_gate: nn.Parameter | None = nn.Parameter(torch.ones(()))
        self.scale = scale
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        update = self.scale * F.linear(F.linear(self.dropout(x), self.galora_A), self.galora_B)
        return self.base_layer(x) + (update if self.galora_gate is None else self.galora_gate * update)

    @torch.no_grad()
    def fold_gate(self) -> None:
        """B <- g B and drop the gate: same output, one parameter less."""
        if self.galora_gate is not None:
            self.galora_B.mul_(self.galora_gate)
            self.galora_gate = None

    def gate_value(self) -> float:
        return 1.0 if self.galora_gate is None else float(self.galora_gate.detach())


@register
class GaLoRA(Method):
    name = "galora"
    Config = GaLoraConfig
    summary = "GaLoRA: LoRA with a scalar gate per module, proximal L1 on the gates, pruned after training"
    metrics = {
        "kept_modules": "adapted modules kept after pruning (|g| >= prune_threshold)",
        "kept_fraction": "kept_modules over the adapted modules",
        "active_layers": "modules whose adapter runs for every input (the kept modules)",
        "total_rank": "sum of ranks over the kept modules",
        "trainable_params_final": "stored adapter parameters after pruning and folding",
        "live_gate_fraction": "fraction of gates with |g| >= prune_threshold during training",
    }

    def __init__(self, config: GaLoraConfig | None = None) -> None:
        super().__init__(config)
        self._adapted: int = 0
        self._final_gates: dict[str, tuple[float, bool]] = {}

    def build(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        cfg = self.config
        targets = find_targets(model, list(cfg.target_modules or ctx.target_modules), ctx.head_modules)
        freeze_base_train_head(model, ctx.head_modules)
        for name, linear in targets:
            replace_module(model, name, GaLoRALinear(linear, cfg.r, cfg.lora_alpha / cfg.r, cfg.lora_dropout))
        self._adapted = len(targets)
        return model.to(ctx.device)

    @staticmethod
    def layers(model: nn.Module) -> dict[str, GaLoRALinear]:
        return {n: m for n, m in model.named_modules() if isinstance(m, GaLoRALinear)}

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """A and B share one decay (``factor_l2``); the gates are not in the optimizer
        (they take the proximal step); the head follows the usual rule."""
        factors, decay, no_decay = [], [], []
        for name, param in model.named_parameters():
            if not param.requires_grad or name.endswith("galora_gate"):
                continue
            if name.endswith(("galora_A", "galora_B")):
                factors.append(param)
            elif param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias"):
                no_decay.append(param)
            else:
                decay.append(param)
        groups = [{"params": factors, "weight_decay": self.config.factor_l2}]
        groups += [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        return groups

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: StepInfo) -> None:
        """Proximal gradient step on every gate: gradient step, then soft-threshold."""
        eta, lam = self.config.gate_lr, self.config.lam
        for layer in self.layers(model).values():
            gate = layer.galora_gate
            if gate is None:
                continue
            if gate.grad is not None:
                gate.sub_(eta * gate.grad)
            gate.copy_(torch.sign(gate) * torch.clamp(gate.abs() - eta * lam, min=0.0))

    def after_evaluation(self, model: nn.Module, step: StepInfo, val_loss: float) -> dict[str, float]:
        gates = [abs(layer.gate_value()) for layer in self.layers(model).values()]
        if not gates:
            return {}
        return {"live_gate_fraction": sum(g >= self.config.prune_threshold for g in gates) / len(gates)}

    def finalize(self, model: nn.Module) -> nn.Module:
        """Remove modules with |g| < threshold; fold g into B in the others."""
        self._final_gates = {}
        for name, layer in self.layers(model).items():
            gate = layer.gate_value()
            keep = abs(gate) >= self.config.prune_threshold
            self._final_gates[name] = (gate, keep)
            if keep:
                layer.fold_gate()
            else:
                replace_module(model, name, layer.base_layer)
        return model

    def stats(self, model: nn.Module) -> dict[str, float]:
        layers = self.layers(model)
        if any(layer.galora_gate is not None for layer in layers.values()):  # not finalized yet
            layers = {n: m for n, m in layers.items() if abs(m.gate_value()) >= self.config.prune_threshold}
        total = self._adapted or max(1, len(layers))
        params = sum(m.galora_A.numel() + m.galora_B.numel() for m in layers.values())
        return {
            "kept_modules": float(len(layers)),
            "kept_fraction": len(layers) / total,
            "active_layers": float(len(layers)),
            "total_rank": float(len(layers) * self.config.r),
            "trainable_params_final": float(params),
        }

    def write_artifacts(self, model: nn.Module, folder: Path) -> list[Path]:
        if not self._final_gates:
            return []
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        gates_path = folder / "galora_gates.json"
        gates_path.write_text(json.dumps({n: {"gate": g, "kept": k} for n, (g, k) in self._final_gates.items()}, indent=1))
        cells = {}
        for name, (gate, kept) in self._final_gates.items():
            block = block_of(name)
            cells[(block or name, name[len(block) + 1 :] if block else name)] = (float(kept), abs(gate))
        heatmap = write_heatmap(folder / "galora_gates.png", cells, ("kept after pruning", "|gate| at the end of training"), "GaLoRA")
        return [gates_path, heatmap]
