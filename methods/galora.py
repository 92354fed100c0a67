"""GaLoRA: LoRA with one scalar gate per module, sparsified by L1 and then pruned.

    y = W0 x + g * s * B A x,   s = alpha / r,   g = 1 at init
    objective: L_task + lambda * sum_m |g_m| + mu * sum_m (||A_m||_F^2 + ||B_m||_F^2)

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
  dL/dg must be *this step's* gradient: the loop zeroes only the optimizer's
  gradients, so a gate's ``.grad`` would add up every past step (measured: own-step
  gradients -1.1e-4, +1.5e-4, -7.4e-4, -3.4e-4 reached the step as -1.1e-4, +0.4e-4,
  -7.0e-4, -10.4e-4). A hook on the gate's use in ``forward`` therefore takes the
  gradient off the graph into ``GaLoRALinear.gate_grad`` and lets none reach
  ``.grad``: the proximal step reads exactly this step's unclipped dL/dg and clears
  it, and the engine's clipping, which belongs to AdamW's step, never sees the gates.
- **Equal L2 on A and B, in the loss** (``extra_loss``, weight mu = ``factor_l2`` > 0).
  Rescaling g -> g/c, B -> cB keeps the function but changes the penalty to
  lambda |g| / c + mu (||A||^2 + c^2 ||B||^2), which grows without bound as c grows:
  norm can no longer be moved into B for free. Minimised over every rescaling of
  (g, A, B) at a fixed function, lambda |g| + mu (||A||^2 + ||B||^2) is
  2 sqrt(2 lambda mu |g| ||A|| ||B||), a penalty on the size of the product, and at
  that balance lambda |g| = 2 mu ||B||^2 = 2 mu ||A||^2, so
  ||g B A||_F <= |g| ||B|| ||A|| = lambda g^2 / (2 mu): a small gate means a small
  update. The penalty must be in the loss: AdamW's decoupled decay (the previous
  mechanism) is not the gradient of an L2 term under Adam's preconditioning, the
  argument above does not apply to it, and at the search space's 0.0 it vanished.
  mu = 0 is refused for the same reason (it re-opens the symmetry).

After training (``finalize``), modules with |g| < ``prune_threshold`` are **removed**:
the wrapper is replaced by its frozen base layer, so their parameters are gone and
nothing is computed for them. The kept modules fold g into B (B <- g B, the gate
disappears), which keeps their outputs exactly. The seed's ``merge()`` neither removed
parameters nor applied the gate (flaw 2). Kept modules stay unmerged, so their FLOPs
count against the unmerged LoRA-r8 reference; merging them would cost 0 extra FLOPs.

Under fp16 loss scaling (``precision: fp16``) the gradient the hook sees is scaled by
the GradScaler, which only unscales the optimizer's parameters: train GaLoRA in fp32
or bf16.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from methods import register
from methods._injection import find_targets, freeze_base_train_head, replace_module
from methods._low_rank_config import LowRankConfig, TargetModules
from methods._routing import block_of, init_lora_factors
from methods._routing_stats import write_heatmap
from methods.base import BuildContext, Method, StepInfo


class GaLoraConfig(LowRankConfig):
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
    lam: float = Field(5e-3, ge=0.0, description="lambda: L1 weight on the gates, in loss units (seed grid 0-1e-2)")
    gate_lr: float = Field(1.0, gt=0.0, description="eta: step size of the proximal gradient step on the gates")
    factor_l2: float = Field(
        1e-5,
        gt=0.0,
        description=(
            "mu: weight of mu * (||A||^2 + ||B||^2) added to the loss; > 0 (0 re-opens the g-B scale symmetry)"
        ),
    )
    prune_threshold: float = Field(0.1, ge=0.0, description="after training, modules with |g| below this are removed")
    target_modules: TargetModules = None


class GaLoRALinear(nn.Module):
    """A frozen ``base_layer`` plus ``galora_A``, ``galora_B`` and the scalar ``galora_gate``
    (None once folded into B).

    ``gate_grad`` holds dL/dg of the backward passes since the last gate step (None when
    there was none). The gate's ``.grad`` stays zero: it is not the optimizer's.
    """

    def __init__(self, base: nn.Linear, r: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.base_layer = base
        self.galora_A, self.galora_B = init_lora_factors(r, base.in_features, base.out_features)
        self.galora_gate: nn.Parameter | None = nn.Parameter(torch.ones(()))
        self.gate_grad: Tensor | None = None
        self.scale = scale
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        update = self.scale * F.linear(F.linear(self.dropout(x), self.galora_A), self.galora_B)
        return self.base_layer(x) + (update if self.galora_gate is None else self._tapped(self.galora_gate) * update)

    def _tapped(self, gate: Tensor) -> Tensor:
        """The gate, with a hook on this use of it that collects its gradient (a fresh
        node per forward pass: nothing is stored on the parameter, so copies and
        pickles of the model carry no hook)."""
        if not (gate.requires_grad and torch.is_grad_enabled()):
            return gate
        tapped = gate.clone()
        tapped.register_hook(self._collect_gate_grad)
        return tapped

    def _collect_gate_grad(self, grad: Tensor) -> Tensor:
        self.gate_grad = grad.detach().clone() if self.gate_grad is None else self.gate_grad + grad.detach()
        return torch.zeros_like(grad)

    def pop_gate_grad(self) -> Tensor | None:
        """dL/dg since the last call, and forget it."""
        grad, self.gate_grad = self.gate_grad, None
        return grad

    @torch.no_grad()
    def fold_gate(self) -> None:
        """B <- g B and drop the gate: same output, one parameter less."""
        if self.galora_gate is not None:
            self.galora_B.mul_(self.galora_gate)
            self.galora_gate = None
            self.gate_grad = None

    def gate_value(self) -> float:
        return 1.0 if self.galora_gate is None else float(self.galora_gate.detach())

    def factor_sq_norm(self) -> Tensor:
        """||A||_F^2 + ||B||_F^2, the L2 term that breaks the gate-B symmetry."""
        return self.galora_A.pow(2).sum() + self.galora_B.pow(2).sum()


@register
class GaLoRA(Method):
    name = "galora"
    Config = GaLoraConfig
    config: GaLoraConfig
    summary = "GaLoRA: LoRA with a scalar gate per module, proximal L1 on the gates, pruned after training"
    metrics: ClassVar[dict[str, str]] = {
        "kept_modules": "adapted modules kept after pruning (|g| >= prune_threshold)",
        "kept_fraction": "kept_modules over the adapted modules",
        "active_layers": "modules whose adapter runs for every input (the kept modules)",
        "total_rank": "sum of ranks over the kept modules",
        "trainable_params_final": "stored adapter parameters after pruning and folding",
        "live_gate_fraction": "fraction of gates with |g| >= prune_threshold during training",
    }
    #: Pruning after training decides which modules stay, hence the FLOPs and every
    #: count of kept modules; only what trains before it is fixed.
    exact_metrics = frozenset({"trainable_params", "head_params"})

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
        """The gates are not in the optimizer (they take the proximal step). A and B get
        no decoupled decay: their L2 is in the loss (``extra_loss``), and a second,
        decoupled shrinkage would make the objective differ from the one the docstring
        argues about. The head follows the usual rule."""
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if not param.requires_grad or name.endswith("galora_gate"):
                continue
            if (
                name.endswith(("galora_A", "galora_B"))
                or param.ndim < 2
                or "norm" in name.lower()
                or name.endswith(".bias")
            ):
                no_decay.append(param)
            else:
                decay.append(param)
        return [
            g
            for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
            if g["params"]
        ]

    def extra_loss(self, model: nn.Module, step: StepInfo) -> Tensor | None:
        """mu * sum over modules of (||A||^2 + ||B||^2): equal L2 on both factors."""
        layers = self.layers(model).values()
        if not layers:
            return None
        return self.config.factor_l2 * torch.stack([layer.factor_sq_norm() for layer in layers]).sum()

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: StepInfo) -> None:
        """Proximal gradient step on every gate, with this step's dL/dg: gradient step,
        then soft-threshold."""
        eta, lam = self.config.gate_lr, self.config.lam
        for layer in self.layers(model).values():
            gate = layer.galora_gate
            if gate is None:
                continue
            grad = layer.pop_gate_grad()
            if grad is not None:
                gate.sub_(eta * grad)
            gate.copy_(torch.sign(gate) * torch.clamp(gate.abs() - eta * lam, min=0.0))
            gate.grad = None

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
        gates_path.write_text(
            json.dumps({n: {"gate": g, "kept": k} for n, (g, k) in self._final_gates.items()}, indent=1)
        )
        cells = {}
        for name, (gate, kept) in self._final_gates.items():
            block = block_of(name)
            cells[(block or name, name[len(block) + 1 :] if block else name)] = (float(kept), abs(gate))
        heatmap = write_heatmap(
            folder / "galora_gates.png", cells, ("kept after pruning", "|gate| at the end of training"), "GaLoRA"
        )
        return [gates_path, heatmap]
