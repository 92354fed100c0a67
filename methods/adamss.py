"""AdaMSS + ASA through peft's ``AdamssConfig`` / ``AdamssModel`` (peft >= 0.19, METHODS.md section 1).

Per module, a truncated SVD W~ = [W0 | b] ~ U S V^T (rank R) is taken; the output rows are
split into K clusters by K-means on the rows of U, and cluster i learns a rank-r_i
update B_i A_i on the frozen projection V^T [x; 1]. Trainable parameters per module:
sum_i min(|S_i|, r_i) * (|S_i| + R), i.e. r_i * (d_out + K * R) when every cluster has at
least r_i rows (:func:`adamss_params`). The V^T buffers (R * (d_in + 1) per module) are
frozen but stored; they are in ``adapter_memory_mb`` and ``projection_buffer_params``.

ASA (adaptive subspace allocation) progressively *freezes* the least important
subspaces, globally over all modules, between ``init_warmup`` and ``final_warmup``.
peft's ``AdamssAsaCallback`` only calls ``AdamssModel.update_and_allocate(global_step)``
from ``on_optimizer_step`` with the 0-based step; :meth:`AdaMSS.after_optimizer_step`
makes the same call, once per optimizer step, gradients still present.

Things to know when reading the numbers (all peft's behaviour, kept as it is):

- ``asa_target_subspaces`` (the seed's ``target_kk``) is a GLOBAL count over all adapted
  modules, not a per-module K. ``asa_target_frac`` gives it as a fraction of all
  subspaces (sum of K over modules) and wins when set.
- Off by one: a mask keeps the subspaces whose score is *strictly* above the n(t)-th
  largest, i.e. n(t) - 1 of them, whenever fewer than the active ones are wanted
  (with n(t) >= active, nothing is frozen). So the final count is
  ``asa_target_subspaces - 1`` when the schedule steps past the target in one mask
  (METHODS.md: a target of 10 ended with 9) and ``asa_target_subspaces`` when an
  earlier mask already took it to target (n = target + 1 keeps target, and the later
  masks at n = target freeze nothing). Ties at the threshold freeze more. We report
  what peft does and do not compensate.
- The last mask falls on the last multiple of ``mask_interval`` inside the window, so
  ``final_warmup`` is rounded down to a multiple of ``mask_interval`` (and to at most the
  last step, T - 1): the target is then really reached before training ends.
- Freezing is not pruning: frozen subspaces keep their trained values, stay in the
  forward pass and are stored. ASA cuts trainable parameters (and optimizer work), not
  FLOPs nor the adapter's size.

Which trainable-parameter number a claim uses (all exclude the head): the engine's
``trainable_params`` is the peak (what the optimizer holds at step 0);
``trainable_params_final`` is what is still trained after the last ASA mask;
``trainable_params_mean`` is the step-weighted mean over training, the fair number for
"ASA trains about 25% fewer parameters". ``adapter_params_stored`` counts every A_i and
B_i, frozen or not.

Example::

    method = AdaMSS(AdaMSS.Config(K=10, ri=1, use_asa=True, asa_target_frac=0.5,
                                  init_warmup_frac=0.05, final_warmup_frac=0.7, mask_interval_frac=0.05))
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

from pydantic import Field, model_validator

from methods import register
from methods._peft_common import (
    MEMORY_METRICS,
    TrainableTracker,
    as_peft_model,
    memory_stats,
    peft_layers,
    save_heatmap,
    steps_from,
    trainable_adapter_params,
)
from methods.base import BuildContext, Method, MethodConfig, StepInfo

if TYPE_CHECKING:
    from peft import AdamssConfig
    from peft.tuners.adamss import AdamssLayer, AdamssModel
    from torch import nn

ADAPTER = "default"

#: The seed README's names -> peft's field names.
ALIASES = {
    "K": "num_subspaces",
    "ri": "subspace_rank",
    "target_kk": "asa_target_subspaces",
    "beta1": "asa_importance_beta",
    "beta2": "asa_uncertainty_beta",
}


def effective_r(r: int, d_in: int, d_out: int, bias: bool = True) -> int:
    """The SVD rank peft really uses: R clamped to min(r, d_out, d_in + bias)."""
    return min(r, d_out, d_in + int(bias))


def adamss_params(d_out: int, r: int, num_subspaces: int, subspace_rank: int) -> int:
    """Trainable parameters of one module when every cluster has >= r_i rows:
    r_i * (d_out + K * R) (sum of r_i * |S_i| for the B_i plus K * r_i * R for the A_i).

    RoBERTa-base with q and v adapted (24 modules of 768 x 768), R = 100, K = 10, r_i = 1:
    24 * (768 + 10 * 100) = 42,432, the figure of the AdaMSS README.
    """
    return subspace_rank * (d_out + num_subspaces * r)


def adamss_params_from_clusters(cluster_sizes: list[int], r: int, subspace_rank: int) -> int:
    """Exact trainable parameters of one module: sum_i min(|S_i|, r_i) * (|S_i| + R)."""
    return sum(max(1, min(size, subspace_rank)) * (size + r) for size in cluster_sizes)


class AdamssMethodConfig(MethodConfig):
    """AdaMSS hyperparameters; defaults are peft's except ASA's schedule, which defaults
    to fractions of the run (``DEFAULT_FRACTIONS``) rather than peft's 50 / 1000 / 100
    steps. The seed's names are accepted as aliases (``aliases``): K, ri, target_kk
    (a global count!), beta1, beta2."""

    #: seed name -> field name; a spec validator may accept these keys too
    aliases: ClassVar[dict[str, str]] = ALIASES

    r: int = Field(100, ge=1, le=4096, description="R, the SVD rank; clamped to min(r, d_out, d_in + 1)")
    num_subspaces: int = Field(5, ge=1, le=256, description="K, clusters of output rows per module (alias K)")
    subspace_rank: int = Field(1, ge=1, le=64, description="r_i, rank of each subspace's update (alias ri)")
    use_asa: bool = Field(False, description="adaptive subspace allocation: freeze unimportant subspaces over time")
    asa_target_subspaces: int = Field(
        50, ge=1, description="active subspaces at the end, a GLOBAL count over all modules (alias target_kk)"
    )
    asa_target_frac: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="the ASA target as a fraction of all subspaces; wins over asa_target_subspaces",
    )
    init_warmup: int | None = Field(None, ge=0, description="ASA: first step of importance accumulation")
    final_warmup: int | None = Field(
        None, ge=1, description="ASA: step of the last mask (rounded down to a mask step)"
    )
    mask_interval: int | None = Field(None, ge=1, description="ASA: steps between two masks")
    init_warmup_frac: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="init_warmup as a fraction of all steps; wins; default 0.05 if neither is set",
    )
    final_warmup_frac: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="final_warmup as a fraction of all steps; wins; default 0.95 if neither is set",
    )
    mask_interval_frac: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="mask_interval as a fraction of all steps; wins; default 0.05 if neither is set",
    )
    asa_importance_beta: float = Field(0.85, gt=0.0, lt=1.0, description="EMA of the importance (alias beta1)")
    asa_uncertainty_beta: float = Field(0.85, gt=0.0, lt=1.0, description="EMA of the uncertainty (alias beta2)")
    asa_schedule_exponent: float = Field(3.0, gt=0.0, description="shape of the cubic-like pruning curve")
    use_dynamic_rank: bool = Field(False, description="per-subspace rank = singular values above svd_threshold * max")
    svd_threshold: float = Field(0.1, gt=0.0, lt=1.0, description="threshold of use_dynamic_rank")
    target_modules: list[str] | None = Field(
        None, description="module-name suffixes to adapt; default: the task's (query, value for BERT)"
    )

    @model_validator(mode="before")
    @classmethod
    def _seed_aliases(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for alias, name in ALIASES.items():
            if alias in data:
                if name in data:
                    raise ValueError(f"give either {alias!r} or {name!r}, not both (they are the same field)")
                data[name] = data.pop(alias)
        return data


@dataclass(frozen=True)
class AsaSchedule:
    """ASA's schedule in 0-based optimizer steps, as handed to peft."""

    init_warmup: int
    final_warmup: int
    mask_interval: int


#: ASA's window when neither steps nor fractions are given: the AdaMSS GLUE example's
#: 5% .. 95% of training (peft's own defaults, 50 / 1000 / 100 steps, assume long runs).
DEFAULT_FRACTIONS = {"init_warmup": 0.05, "final_warmup": 0.95, "mask_interval": 0.05}


def _schedule_point(config: AdamssMethodConfig, name: str, total_steps: int) -> int:
    fraction = getattr(config, f"{name}_frac")
    steps = getattr(config, name)
    if fraction is None and steps is None:
        fraction = DEFAULT_FRACTIONS[name]
    return steps_from(steps or 0, fraction, total_steps)


def resolve_asa_schedule(config: AdamssMethodConfig, total_steps: int) -> AsaSchedule:
    """Steps or fractions -> steps; ``final_warmup`` is clamped to the last step and
    rounded down to a multiple of ``mask_interval`` so the last mask reaches the target."""
    mask_interval = max(1, _schedule_point(config, "mask_interval", total_steps))
    init_warmup = _schedule_point(config, "init_warmup", total_steps)
    final_warmup = min(_schedule_point(config, "final_warmup", total_steps), total_steps - 1)
    final_warmup = (final_warmup // mask_interval) * mask_interval
    if final_warmup <= init_warmup:
        raise ValueError(
            f"ASA schedule is empty with {total_steps} steps: final_warmup rounds to {final_warmup} "
            f"(mask_interval {mask_interval}), not after init_warmup {init_warmup}; use fractions or a smaller "
            "mask_interval"
        )
    return AsaSchedule(init_warmup=init_warmup, final_warmup=final_warmup, mask_interval=mask_interval)


def adamss_layers(model: nn.Module) -> dict[str, AdamssLayer]:
    """AdaMSS layers by module path inside the transformers model."""
    from peft.tuners.adamss.layer import AdamssLayer

    return peft_layers(model, AdamssLayer, "adamss_A", ADAPTER)


def subspace_factors(layer: AdamssLayer, key: str) -> nn.ParameterList:
    """The adapter's ``adamss_A`` or ``adamss_B`` of ``layer``: one tensor per subspace,
    a ParameterList that peft keeps in a ModuleDict (so typed as a plain Module)."""
    return cast("nn.ParameterList", getattr(layer, key)[ADAPTER])


def adamss_peft_config(model: nn.Module) -> AdamssConfig:
    """The AdamssConfig peft keeps for the adapter (ASA's target count lives there)."""
    return cast("AdamssConfig", as_peft_model(model).peft_config[ADAPTER])


def active_subspaces(model: nn.Module) -> dict[str, int]:
    """Subspaces per module that ASA has not frozen (A_i still requires a gradient)."""
    return {
        name: sum(1 for param in subspace_factors(layer, "adamss_A") if param.requires_grad)
        for name, layer in adamss_layers(model).items()
    }


@register
class AdaMSS(Method):
    name = "adamss"
    Config = AdamssMethodConfig
    config: AdamssMethodConfig
    summary = "AdaMSS (peft): SVD + K-means subspaces with rank-r_i updates; ASA freezes subspaces globally"
    metrics: ClassVar[dict[str, str]] = {
        "active_subspaces": "subspaces still trained at the end, summed over modules (with ASA: the target or "
        "target - 1, peft's strict comparison; see the module doc)",
        "total_subspaces": "subspaces over all modules (sum of K after clamping to d_out)",
        "asa_target_subspaces": "ASA's global target count in force (0 without ASA)",
        "trainable_params_peak": "most adapter parameters trained at once (the optimizer's load at step 0; "
        "equals the engine's trainable_params)",
        "trainable_params_final": "adapter parameters still trained after the last ASA mask (with ASA, set by "
        "asa_target_subspaces and the cluster sizes, not by accuracy)",
        "trainable_params_mean": "step-weighted mean of trained adapter parameters over training (with ASA, set "
        "mostly by the schedule)",
        "adapter_params_stored": "all A_i and B_i, frozen or not (frozen ones are non-zero and stay in the forward)",
        "projection_buffer_params": "elements of the frozen V^T buffers, R * (d_in + 1) per module",
        **MEMORY_METRICS,
    }
    #: peft seeds the randomized SVD and the K-means with the run's seed, so the cluster
    #: sizes, hence every A_i/B_i shape (the parameter counts, ``adapter_memory_mb``) and
    #: the adapter's FLOPs, can differ between seeds; ASA's masks depend on training.
    #: What the configuration fixes: the subspace counts, the V^T buffers, the base.
    exact_metrics = frozenset(
        {"head_params", "total_subspaces", "asa_target_subspaces", "projection_buffer_params", "base_memory_mb"}
    )

    def __init__(self, config: AdamssMethodConfig | None = None) -> None:
        super().__init__(config)
        self.schedule: AsaSchedule | None = None
        self.tracker = TrainableTracker()

    def build(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        from peft import AdamssConfig, get_peft_model

        cfg = self.config
        schedule_kwargs: dict[str, Any] = {}
        if cfg.use_asa:
            self.schedule = resolve_asa_schedule(cfg, ctx.total_steps)
            schedule_kwargs = asdict(self.schedule)
        peft_config = AdamssConfig(
            task_type=ctx.peft_task_type,
            r=cfg.r,
            num_subspaces=cfg.num_subspaces,
            subspace_rank=cfg.subspace_rank,
            use_asa=cfg.use_asa,
            asa_target_subspaces=cfg.asa_target_subspaces,
            asa_importance_beta=cfg.asa_importance_beta,
            asa_uncertainty_beta=cfg.asa_uncertainty_beta,
            asa_schedule_exponent=cfg.asa_schedule_exponent,
            use_dynamic_rank=cfg.use_dynamic_rank,
            svd_threshold=cfg.svd_threshold,
            random_seed=ctx.seed,
            target_modules=list(cfg.target_modules or ctx.target_modules),
            modules_to_save=list(ctx.head_modules),
            **schedule_kwargs,
        )
        peft_model = get_peft_model(model, peft_config)
        if cfg.use_asa and cfg.asa_target_frac is not None:
            total = self._total_subspaces(peft_model)
            adamss_peft_config(peft_model).asa_target_subspaces = max(1, round(cfg.asa_target_frac * total))
        return peft_model

    @staticmethod
    def _total_subspaces(model: nn.Module) -> int:
        return sum(layer.num_subspaces[ADAPTER] for layer in adamss_layers(model).values())

    def after_optimizer_step(self, model: nn.Module, step: StepInfo) -> None:
        self.tracker.record(trainable_adapter_params(model))  # what this step trained
        cast("AdamssModel", as_peft_model(model).base_model).update_and_allocate(step.step)

    def stats(self, model: nn.Module) -> dict[str, float]:
        layers = adamss_layers(model)
        stored = sum(
            p.numel()
            for layer in layers.values()
            for key in ("adamss_A", "adamss_B")
            for p in subspace_factors(layer, key)
        )
        buffers = sum(layer.adamss_newB[ADAPTER].numel() for layer in layers.values())
        target = adamss_peft_config(model).asa_target_subspaces if self.config.use_asa else 0
        return {
            "active_subspaces": float(sum(active_subspaces(model).values())),
            "total_subspaces": float(self._total_subspaces(model)),
            "asa_target_subspaces": float(target),
            **self.tracker.summary(trainable_adapter_params(model)),
            "adapter_params_stored": float(stored),
            "projection_buffer_params": float(buffers),
            **memory_stats(model),
        }

    def write_artifacts(self, model: nn.Module, folder: Path) -> list[Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        active = active_subspaces(model)
        layers = adamss_layers(model)
        record = {
            "schedule": asdict(self.schedule) if self.schedule else None,
            "asa_target_subspaces": adamss_peft_config(model).asa_target_subspaces if self.config.use_asa else None,
            "modules": {
                name: {
                    "active_subspaces": active[name],
                    "cluster_sizes": [int(p.shape[0]) for p in subspace_factors(layer, "adamss_B")],
                    "subspace_ranks": [int(p.shape[0]) for p in subspace_factors(layer, "adamss_A")],
                }
                for name, layer in layers.items()
            },
            # [first step, trainable adapter params] at every change, not one entry per step
            "trainable_params_changes": [
                [step, count]
                for step, count in enumerate(self.tracker.counts)
                if step == 0 or count != self.tracker.counts[step - 1]
            ],
        }
        json_path = folder / "adamss_subspaces.json"
        json_path.write_text(json.dumps(record, indent=2))
        png = save_heatmap(
            {name: float(n) for name, n in active.items()},
            folder / "active_subspaces_heatmap.png",
            title="AdaMSS subspaces still trained at the end",
            colorbar_label="active subspaces",
        )
        return [json_path, png]
