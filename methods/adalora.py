"""AdaLoRA through peft's ``AdaLoraConfig`` and ``RankAllocator`` (Zhang et al., ICLR 2023).

y = W0 x + (alpha / init_r) * B (E * A) x, an SVD-shaped update whose singular values E
are pruned globally (over all adapted modules) along a cubic budget schedule from
``init_r * M`` triplets down to ``target_r * M`` (METHODS.md section 2). peft ships all
of it; this module only wires peft into our training loop:

- ``total_step`` is the real number of optimizer steps (``ctx.total_steps``);
- ``update_and_allocate(step)`` runs once per optimizer step, after ``optimizer.step()``
  and before ``zero_grad`` (gradients are still there, as peft's allocator needs);
- the orthogonal regulariser is always in the training loss exactly once: peft adds it
  inside ``AdaLoraModel.forward`` only when the output carries a ``.loss``; a forward
  hook records whether it did, and ``extra_loss`` adds the same term only if not;
- ``finalize`` slices every module down to its kept ranks (peft's
  ``resize_modules_by_rank_pattern``), so evaluation FLOPs and ``adapter_memory_mb``
  are those of the final adapter; outputs do not change (pruned triplets have E = 0).

Schedule. The paper's scripts scale with the run: tinit is 9-15% of the
optimizer steps, tfinal 43-58%, deltaT 0.03-0.2% (DeBERTaV3 GLUE scripts, e.g. SST-2:
6000 / 22000 / 100 of 50,520 steps; CoLA: 800 / 3500 / 10 of 6,700). Fixed step counts
do not: ``deltaT = 50`` in a 64-step run leaves no multiple of 50 inside the pruning
window (steps 7-37), so the budget was masked once, at the end. So all three points are
fractions of the run's optimizer steps T (``tinit_frac``, ``tfinal_frac``,
``deltaT_frac``), turned into peft's integer step counts in :func:`resolve_schedule`.
peft (0-based steps, as ``StepInfo.step``) keeps the budget at ``init_r * M`` up to
``tinit``, masks to the cubic budget on every multiple of ``deltaT`` after it, and
forces the final mask (``target_r * M``) at step ``T - tfinal``, after which the rank
pattern is fixed. peft never reaches that step when ``tfinal = 0`` (the last step is
``T - 1``), so ``tfinal`` is at least 1 step: the final budget is always applied, at
the latest on the last step. :meth:`BudgetSchedule.mask_steps` lists the masking steps.

Example::

    method = AdaLoRA(AdaLoRA.Config(init_r=12, target_r=4, tinit_frac=0.1, tfinal_frac=0.3, deltaT_frac=0.01))
    model = method.build(base_model, ctx)      # ctx.total_steps = epochs * steps/epoch
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

from pydantic import Field, model_validator

from methods import register
from methods._peft_common import MEMORY_METRICS, as_peft_model, memory_stats, peft_layers, save_heatmap
from methods.base import BuildContext, Method, MethodConfig, StepInfo

if TYPE_CHECKING:
    import torch
    from peft import AdaLoraConfig
    from peft.tuners.adalora import AdaLoraLayer, AdaLoraModel
    from torch import nn

ADAPTER = "default"


class AdaLoraMethodConfig(MethodConfig):
    """AdaLoRA hyperparameters (METHODS.md section 2): peft's defaults, except the
    schedule, which is given as fractions of the run and defaults to the paper's scripts
    (peft's step counts tinit = tfinal = 0, deltaT = 1 do not scale with the run)."""

    init_r: int = Field(
        12, ge=1, le=512, description="initial rank r0 of every module (the starting budget is r0 * M)"
    )
    init_r_factor: float | None = Field(
        None, ge=1.0, le=8.0, description="init_r as a multiple of target_r (rounded); wins over init_r when set"
    )
    target_r: int = Field(
        8,
        ge=1,
        le=512,
        description="average final rank: the final budget is target_r * M triplets, allocated globally",
    )
    tinit_frac: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="peft's tinit as a fraction of all optimizer steps: the share of the run at the full budget "
        "before pruning starts (paper scripts: 0.09-0.15)",
    )
    tfinal_frac: float = Field(
        0.4,
        ge=0.0,
        lt=1.0,
        description="peft's tfinal as a fraction of all optimizer steps: the share at the end that trains with the "
        "final rank pattern fixed (paper scripts: 0.43-0.58; at least 1 step, see module doc)",
    )
    deltaT_frac: float = Field(
        0.002,
        gt=0.0,
        le=0.5,
        description="peft's deltaT as a fraction of all optimizer steps: the interval between two budget masks "
        "while the budget shrinks (at least 1 step; paper scripts: 0.0003-0.002)",
    )
    beta1: float = Field(0.85, gt=0.0, lt=1.0, description="EMA coefficient of the sensitivity")
    beta2: float = Field(0.85, gt=0.0, lt=1.0, description="EMA coefficient of the uncertainty")
    orth_reg_weight: float = Field(0.5, ge=0.0, description="weight of the orthogonality regulariser on A and B")
    lora_alpha: float = Field(
        8.0, gt=0, description="scaling numerator: s = lora_alpha / init_r (constant in training)"
    )
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target_modules: list[str] | None = Field(
        None, description="module-name suffixes to adapt; default: the task's (query, value for BERT)"
    )

    @property
    def initial_rank(self) -> int:
        """init_r in force: ``round(init_r_factor * target_r)`` when the factor is set."""
        if self.init_r_factor is not None:
            return max(self.target_r, round(self.init_r_factor * self.target_r))
        return self.init_r

    @model_validator(mode="after")
    def _target_below_init(self) -> AdaLoraMethodConfig:
        if self.target_r > self.initial_rank:
            raise ValueError(f"target_r ({self.target_r}) must not exceed init_r ({self.initial_rank})")
        return self

    @model_validator(mode="after")
    def _schedule_leaves_a_pruning_window(self) -> AdaLoraMethodConfig:
        """The budget shrinks between tinit and T - tfinal: that window must exist and
        hold at least two masks, or allocation collapses into the single final one."""
        window = 1.0 - self.tinit_frac - self.tfinal_frac
        if window <= 0:
            raise ValueError(
                f"tinit_frac + tfinal_frac must be < 1 (got {self.tinit_frac} + {self.tfinal_frac}): "
                "no steps would be left to prune in"
            )
        if 2 * self.deltaT_frac > window:
            raise ValueError(
                f"deltaT_frac ({self.deltaT_frac}) must be at most half the pruning window "
                f"(1 - tinit_frac - tfinal_frac = {window:.3g}), or the budget is masked once or never before the end"
            )
        return self


@dataclass(frozen=True)
class BudgetSchedule:
    """The integer step counts handed to peft's ``AdaLoraConfig``."""

    total_step: int
    tinit: int
    tfinal: int
    deltaT: int

    @property
    def final_mask_step(self) -> int:
        """0-based step at which the budget reaches target_r * M and the pattern is fixed."""
        return self.total_step - self.tfinal

    def mask_steps(self) -> list[int]:
        """The 0-based steps at which peft masks the budget: every multiple of deltaT
        after tinit and before the final mask (``RankAllocator.budget_schedule``), then
        the forced final mask (``AdaLoraModel.update_and_allocate``)."""
        first = self.tinit + 1
        first += -first % self.deltaT
        return [*range(first, self.final_mask_step, self.deltaT), self.final_mask_step]


def resolve_schedule(config: AdaLoraMethodConfig, total_steps: int) -> BudgetSchedule:
    """Turn the fractions into step counts of a ``total_steps`` run and clamp them so
    peft accepts them and really applies the final budget: 1 <= tfinal <= T - 1,
    tinit < T - tfinal and deltaT >= 1."""
    if total_steps < 2:
        raise ValueError(f"AdaLoRA needs at least 2 optimizer steps to prune, got total_steps={total_steps}")
    tfinal = min(max(1, round(config.tfinal_frac * total_steps)), total_steps - 1)
    tinit = min(round(config.tinit_frac * total_steps), total_steps - tfinal - 1)
    delta_t = max(1, round(config.deltaT_frac * total_steps))
    return BudgetSchedule(total_step=total_steps, tinit=tinit, tfinal=tfinal, deltaT=delta_t)


def adalora_config(config: AdaLoraMethodConfig, ctx: BuildContext, schedule: BudgetSchedule):
    """A peft ``AdaLoraConfig`` for sequence classification (head trained in full)."""
    from peft import AdaLoraConfig

    return AdaLoraConfig(
        task_type=ctx.peft_task_type,
        init_r=config.initial_rank,
        target_r=config.target_r,
        tinit=schedule.tinit,
        tfinal=schedule.tfinal,
        deltaT=schedule.deltaT,
        beta1=config.beta1,
        beta2=config.beta2,
        orth_reg_weight=config.orth_reg_weight,
        total_step=schedule.total_step,
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]  # peft annotates int; it only divides by it
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules or ctx.target_modules),
        modules_to_save=list(ctx.head_modules),
    )


def orthogonal_regulariser(model: nn.Module, adapter: str = ADAPTER) -> torch.Tensor:
    """peft's regulariser, the same formula as in ``AdaLoraModel.forward``: the mean over
    all A and B matrices of ||A A^T - I||_F and ||B^T B - I||_F (plain Frobenius norm).

    Used only when peft did not add it (an output without ``.loss``), and by the tests
    to check that peft's ``out.loss`` contains exactly ``orth_reg_weight`` times this.
    """
    import torch

    terms = []
    for name, param in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and adapter in name:
            cov = param @ param.T if "lora_A" in name else param.T @ param
            eye = torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device)
            terms.append(torch.linalg.matrix_norm(cov - eye, ord="fro"))
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).mean()


def adalora_layers(model: nn.Module) -> dict[str, AdaLoraLayer]:
    """AdaLoRA layers by module path inside the transformers model (peft's rank_pattern keys)."""
    from peft.tuners.adalora.layer import AdaLoraLayer

    return peft_layers(model, AdaLoraLayer, "lora_E", ADAPTER)


def adalora_tuner(model: nn.Module) -> AdaLoraModel:
    """peft's AdaLoRA tuner inside the PeftModel ``build`` returned (the budget allocator)."""
    return cast("AdaLoraModel", as_peft_model(model).base_model)


def adalora_peft_config(model: nn.Module) -> AdaLoraConfig:
    """The AdaLoraConfig peft keeps for the adapter (its ``rank_pattern`` after masking)."""
    return cast("AdaLoraConfig", as_peft_model(model).peft_config[ADAPTER])


def kept_ranks(model: nn.Module) -> dict[str, int]:
    """Ranks kept per module: from peft's rank pattern once a budget mask ran, else the
    module's current rank. (peft may strip the adapter name from the pattern's keys when
    it saves; both spellings are accepted.)"""
    pattern = adalora_peft_config(model).rank_pattern or {}
    ranks = {}
    for name, module in adalora_layers(model).items():
        mask = pattern.get(f"{name}.lora_E.{ADAPTER}", pattern.get(f"{name}.lora_E"))
        ranks[name] = int(sum(bool(v) for v in mask)) if mask is not None else int(module.lora_E[ADAPTER].shape[0])
    return ranks


@register
class AdaLoRA(Method):
    name = "adalora"
    Config = AdaLoraMethodConfig
    config: AdaLoraMethodConfig
    summary = "AdaLoRA (peft): SVD-form LoRA whose ranks are pruned globally to a target budget"
    metrics: ClassVar[dict[str, str]] = {
        "total_rank": (
            "sum over adapted modules of the ranks kept at the end (target_r * M once the budget is reached)"
        ),
        "kept_modules": "adapted modules that keep at least one rank",
        "init_rank_budget": "rank budget at the start: init_r * M",
        "target_rank_budget": "rank budget at the end: target_r * M",
        "trainable_params_final": "adapter parameters of the kept triplets, sum of kept * (d_in + d_out + 1): "
        "what the final (resized) adapter stores",
        "trainable_params_mean": "step-weighted mean of trainable adapter parameters; equals the peak "
        "(init_r * (d_in + d_out + 1) per module) because masked triplets keep training",
        **MEMORY_METRICS,
    }
    #: The rank pruning decides the final ranks, hence the finalized adapter's FLOPs,
    #: ``total_rank``, ``kept_modules``, ``trainable_params_final`` and ``adapter_memory_mb``
    #: (and ties at peft's threshold can prune past the budget). What the configuration
    #: fixes: the peak count (every triplet trains until the end), the budgets, the mean
    #: (equal to the peak) and the base's memory.
    exact_metrics = frozenset(
        {
            "trainable_params",
            "head_params",
            "init_rank_budget",
            "target_rank_budget",
            "trainable_params_mean",
            "base_memory_mb",
        }
    )

    def __init__(self, config: AdaLoraMethodConfig | None = None) -> None:
        super().__init__(config)
        self.schedule: BudgetSchedule | None = None
        #: whether peft added the orthogonal regulariser to the last forward's loss
        self._peft_added_orth: bool = False

    def build(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        from peft import get_peft_model

        self.schedule = resolve_schedule(self.config, ctx.total_steps)
        peft_model = get_peft_model(model, adalora_config(self.config, ctx, self.schedule))
        self._watch_orth_regulariser(peft_model)
        return peft_model

    def _watch_orth_regulariser(self, peft_model: nn.Module) -> None:
        def record(_module, _args, output) -> None:
            self._peft_added_orth = getattr(output, "loss", None) is not None

        as_peft_model(peft_model).base_model.register_forward_hook(record)

    def extra_loss(self, model: nn.Module, step: StepInfo) -> torch.Tensor | None:
        if self._peft_added_orth or self.config.orth_reg_weight == 0:
            return None
        return self.config.orth_reg_weight * orthogonal_regulariser(model)

    def after_optimizer_step(self, model: nn.Module, step: StepInfo) -> None:
        adalora_tuner(model).update_and_allocate(step.step)

    def finalize(self, model: nn.Module) -> nn.Module:
        pattern = adalora_peft_config(model).rank_pattern
        if pattern:
            adalora_tuner(model).resize_modules_by_rank_pattern(pattern, ADAPTER)
        return model

    def _param_counts(self, model: nn.Module) -> dict[str, float]:
        ranks = kept_ranks(model)
        layers = adalora_layers(model)
        per_rank = {
            # peft types in/out_features as int | None; both are set on every Linear it adapts
            name: layer.in_features + layer.out_features + 1  # type: ignore[operator]
            for name, layer in layers.items()
        }
        n_modules = len(layers)
        return {
            "total_rank": float(sum(ranks.values())),
            "kept_modules": float(sum(1 for r in ranks.values() if r > 0)),
            "init_rank_budget": float(self.config.initial_rank * n_modules),
            "target_rank_budget": float(self.config.target_r * n_modules),
            "trainable_params_final": float(sum(ranks[n] * per_rank[n] for n in layers)),
            "trainable_params_mean": float(sum(self.config.initial_rank * per_rank[n] for n in layers)),
        }

    def stats(self, model: nn.Module) -> dict[str, float]:
        return {**self._param_counts(model), **memory_stats(model)}

    def write_artifacts(self, model: nn.Module, folder: Path) -> list[Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        ranks = kept_ranks(model)
        pattern = adalora_peft_config(model).rank_pattern or {}
        record: dict[str, Any] = {
            "init_r": self.config.initial_rank,
            "target_r": self.config.target_r,
            "schedule": {
                **asdict(self.schedule),
                "final_mask_step": self.schedule.final_mask_step,
                "budget_masks": len(self.schedule.mask_steps()),
            }
            if self.schedule
            else None,
            "ranks": ranks,
            "rank_pattern": {k: [bool(v) for v in mask] for k, mask in pattern.items()},
        }
        json_path = folder / "rank_pattern.json"
        json_path.write_text(json.dumps(record, indent=2))
        png = save_heatmap(
            {name: float(r) for name, r in ranks.items()},
            folder / "rank_heatmap.png",
            title=f"AdaLoRA kept ranks (init {self.config.initial_rank}, target {self.config.target_r})",
            colorbar_label="kept rank",
        )
        return [json_path, png]
