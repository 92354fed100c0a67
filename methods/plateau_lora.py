"""LoRA whose rank grows when the validation loss plateaus (seed 001; METHODS.md section 3).

Every adapted module starts at rank ``r0``. After each validation pass the (optionally
EMA-smoothed) validation loss is compared with the best so far; when it has not
improved by more than ``min_delta`` for ``patience`` evaluations, every module grows
by ``delta_r`` ranks, up to ``r_max``, and the rule then ignores ``cooldown``
evaluations. The engine evaluates once per epoch, so growth needs several epochs: with
``patience=1, cooldown=0`` the earliest growth is after epoch 2 (epoch 1 always sets
the first "best").

What makes the growth sound (the seed sketch had none of it):

- Factors are pre-allocated at ``r_max`` (``MaskedLoraLinear``) and only the first
  ``rank`` rows run, so nothing is added to the optimizer mid-training.
- The scaling is fixed, alpha/r_max or alpha/sqrt(r_max). With alpha/r every growth
  would rescale the directions already learned and the loss would jump.
- Reserved rows of A and columns of B are exactly 0 until activated. The forward
  slices them away, so their gradient is exactly 0; AdamW's moments for them stay 0
  (its update is 0/(0+eps) = 0) and its decoupled decay multiplies 0. They are thus
  neither trained nor shrunk while inactive, with the default parameter groups.
- On growth the new A rows are drawn (Kaiming uniform) and the new B columns are 0,
  so the model computes exactly the same function at the moment of growth.

Known limitation: the optimizer's per-tensor step counter keeps running, so the fresh
rows start with zero Adam moments under an advanced bias correction; their first
updates are ~1-5x larger than a fresh Adam would make (an implicit, short warm
restart, which METHODS.md recommends anyway since the LR has decayed by then).

The validation split that triggers growth is the one the search selects on; a
held-out split for the rank decisions would be cleaner (METHODS.md section 3).

Parameter counts (METHODS.md sections 3 and 8). The optimizer holds every
pre-allocated row, r_max * sum(d_in + d_out), from step 0, whatever the rank; the
adapter uses and trains only the active rows, ``rank * sum(d_in + d_out)``, and those
are what it reports (``trainable_adapter_params``): the engine's ``trainable_params``
is their peak over the steps (the same number as ``trainable_params_peak``),
``trainable_params_final`` the rows in use at the end (what the adapter needs
stored), ``trainable_params_mean`` the step-weighted mean, and ``mean_train_rank``
that mean in ranks per module (model-independent: one rank is sum(d_in + d_out)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from methods import register
from methods.base import BuildContext, Method, MethodConfig, StepInfo

if TYPE_CHECKING:
    import torch
    from torch import nn


class PlateauLoraConfig(MethodConfig):
    r0: int = Field(2, ge=1, le=256, description="initial rank of every adapted module")
    delta_r: int = Field(2, ge=1, le=256, description="ranks added per growth event")
    r_max: int = Field(8, ge=1, le=256, description="rank cap; factors are pre-allocated at this width")
    patience: int = Field(1, ge=1, le=100, description="evaluations without improvement before growing")
    min_delta: float = Field(
        0.0, ge=0.0, description="an evaluation improves only if the loss drops by more than this"
    )
    cooldown: int = Field(0, ge=0, le=100, description="evaluations ignored after each growth")
    ema: float = Field(0.0, ge=0.0, lt=1.0, description="EMA factor smoothing the validation loss (0: raw loss)")
    lora_alpha: float = Field(16.0, gt=0, description="scaling numerator (divided by r_max, fixed)")
    scaling: Literal["r_max", "sqrt_r_max"] = Field(
        "r_max", description="fixed scaling: alpha / r_max, or alpha / sqrt(r_max) (rsLoRA-style)"
    )
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target_modules: list[str] | None = Field(
        None, description="module-name suffixes to adapt; default: the task's (query, value for BERT)"
    )

    @model_validator(mode="after")
    def _r0_within_cap(self) -> PlateauLoraConfig:
        if self.r0 > self.r_max:
            raise ValueError(f"r0 ({self.r0}) must not exceed r_max ({self.r_max})")
        return self


@dataclass
class PlateauRule:
    """The decision alone: ``update(val_loss)`` returns True when growth is due.

    Example::

        rule = PlateauRule(patience=2, min_delta=0.01)
        [rule.update(x) for x in (1.0, 0.995, 0.99)]   # [False, False, True]

    After acting on a True, call ``grew()``: it resets the count and starts the cooldown.
    During the cooldown evaluations the best loss is still tracked but not-improving
    evaluations are not counted (as in ``torch.optim.lr_scheduler.ReduceLROnPlateau``).
    """

    patience: int
    min_delta: float = 0.0
    cooldown: int = 0
    ema: float = 0.0
    best: float = math.inf
    smoothed: float | None = None
    bad_evaluations: int = 0
    cooldown_left: int = 0

    def update(self, val_loss: float) -> bool:
        if self.smoothed is None or self.ema == 0.0 or not math.isfinite(self.smoothed):
            self.smoothed = float(val_loss)
        else:
            self.smoothed = self.ema * self.smoothed + (1.0 - self.ema) * float(val_loss)
        if self.smoothed < self.best - self.min_delta:  # NaN compares False: not an improvement
            self.best = self.smoothed
            self.bad_evaluations = 0
        else:
            self.bad_evaluations += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_evaluations = 0
            return False
        return self.bad_evaluations >= self.patience

    def grew(self) -> None:
        self.bad_evaluations = 0
        self.cooldown_left = self.cooldown


@dataclass
class _Trajectory:
    ranks: list[tuple[int, int]] = field(default_factory=list)  # (optimizer step, rank from then on)
    growth_steps: list[int] = field(default_factory=list)
    param_sum: float = 0.0  # sum over optimizer steps of active adapter parameters
    param_peak: int = 0  # most active adapter parameters in any optimizer step
    rank_sum: float = 0.0  # sum over optimizer steps of the active rank per module
    steps: int = 0

    def record_step(self, active_params: int, rank: int) -> None:
        """One optimizer step trained ``active_params`` adapter parameters at ``rank``."""
        self.param_sum += active_params
        self.param_peak = max(self.param_peak, active_params)
        self.rank_sum += rank
        self.steps += 1


@register
class PlateauLoRA(Method):
    name = "plateau_lora"
    Config = PlateauLoraConfig
    config: PlateauLoraConfig
    summary = "LoRA starting at rank r0, grown by delta_r on validation-loss plateaus up to r_max"
    metrics: ClassVar[dict[str, str]] = {
        "rank": "current rank of every adapted module, reported after each evaluation (trajectory)",
        "rank_final": "rank of every adapted module at the end of training",
        "total_rank": "sum of final ranks over adapted modules",
        "trainable_params_peak": "most active adapter parameters in any optimizer step (rank * sum(d_in + d_out)); "
        "equal to the engine's trainable_params, which counts active rows only for this method",
        "trainable_params_final": "active adapter parameters at the end (rank_final * sum(d_in + d_out)): "
        "what the adapter needs stored",
        "trainable_params_mean": "step-weighted mean of active adapter parameters over training",
        "mean_train_rank": "step-weighted mean of the rank per module over training",
        "growths": "number of growth events",
    }
    #: Growth follows the validation loss, so every rank and count and the FLOPs vary.
    exact_metrics = frozenset({"head_params"})

    def __init__(self, config: PlateauLoraConfig | None = None) -> None:
        super().__init__(config)
        self.rank = self.config.r0
        self.rule = PlateauRule(self.config.patience, self.config.min_delta, self.config.cooldown, self.config.ema)
        self.trajectory = _Trajectory(ranks=[(0, self.config.r0)])
        self._generator: torch.Generator | None = None

    def build(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        from methods._masked_lora import inject_masked_lora, seeded_generator

        cfg = self.config
        self._generator = generator = seeded_generator(ctx.seed)
        inject_masked_lora(model, ctx, cfg, generator, rank=cfg.r0, init_rows=cfg.r0, scale_by=cfg.scaling)
        return model

    def _layers(self, model: nn.Module):
        from methods._injection import adapters
        from methods._masked_lora import MaskedLoraLinear

        return [layer for _, layer in adapters(model, MaskedLoraLinear)]

    def active_params(self, model: nn.Module) -> int:
        return sum(layer.active_params() for layer in self._layers(model))

    def trainable_adapter_params(self, model: nn.Module) -> int:
        """The active rows only: the pre-allocated ones are neither used nor trained."""
        return self.active_params(model)

    def after_optimizer_step(self, model: nn.Module, step: StepInfo) -> None:
        self.trajectory.record_step(self.active_params(model), self.rank)

    def after_evaluation(self, model: nn.Module, step: StepInfo, val_loss: float) -> dict[str, float]:
        plateau = self.rule.update(val_loss)
        training_left = step.step < step.total_steps  # growing after the last step trains nothing
        if plateau and self.rank < self.config.r_max and training_left:
            self.grow(model, min(self.rank + self.config.delta_r, self.config.r_max))
            self.rule.grew()
            self.trajectory.growth_steps.append(step.step)
            self.trajectory.ranks.append((step.step, self.rank))
        return {"rank": float(self.rank)}

    def grow(self, model: nn.Module, new_rank: int) -> None:
        """Activate ranks up to ``new_rank`` in every module; the function is unchanged."""
        for layer in self._layers(model):
            layer.grow(new_rank, self._generator)
        self.rank = new_rank

    def stats(self, model: nn.Module) -> dict[str, float]:
        layers = self._layers(model)
        final = float(sum(layer.active_params() for layer in layers))
        trained = self.trajectory
        return {
            "rank_final": float(self.rank),
            "total_rank": float(sum(layer.rank for layer in layers)),
            "trainable_params_peak": float(trained.param_peak) if trained.steps else final,
            "trainable_params_final": final,
            "trainable_params_mean": trained.param_sum / trained.steps if trained.steps else final,
            "mean_train_rank": trained.rank_sum / trained.steps if trained.steps else float(self.rank),
            "growths": float(len(trained.growth_steps)),
        }

    def write_artifacts(self, model: nn.Module, folder: Path) -> list[Path]:
        from methods._figures import pyplot, save_figure

        plt = pyplot()

        steps = [s for s, _ in self.trajectory.ranks] + [max(self.trajectory.steps, self.trajectory.ranks[-1][0])]
        ranks = [r for _, r in self.trajectory.ranks] + [self.trajectory.ranks[-1][1]]
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.step(steps, ranks, where="post")
        ax.axhline(self.config.r_max, linestyle=":", color="grey", label="r_max")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("rank per module")
        ax.set_title("plateau-triggered rank growth")
        ax.legend(loc="lower right")
        return [save_figure(fig, folder / "rank_trajectory.png")]
