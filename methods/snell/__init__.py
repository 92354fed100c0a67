"""SNELL: sparse tuning through kernelised low-rank tables (Shen et al., NeurIPS 2024).

Following the released code (ssfgunner/SNELL, class ``SNELL``; METHODS.md section 5),
each adapted linear layer learns two tables ``In_Q in R^{H x d_in x q/H}`` and
``Out_Q in R^{H x d_out x q/H}`` (``H = num_heads = 2``, ``q = low_rank_dim``: the same
q (d_in + d_out) parameters as LoRA rank q) and builds a dense update through a
*distance kernel*::

    dW^T[i, j] = sum_h c_h * || In_Q[h, i] - Out_Q[h, j] ||_2,    c_h = 0.1 * (-1)^h

whose rank can exceed q. ``kernel: lora`` swaps in the linear kernel ``B A`` (the
paper's ablation) with everything else unchanged.

Competition-based sparsification, recomputed on every forward pass (no indices are
stored): with ``k = round(sparsity * numel)`` and tau the k-th smallest ``|dW|``::

    dW_s = dW * stopgrad(|dW|) * 1[|dW| > tau]

Survivors are scaled by their own magnitude, in the output and in the gradient, so
large entries grow faster. tau comes from ``kthvalue`` on the flattened magnitudes:
``torch.quantile`` (the released code's choice) raises above 16,777,216 elements,
i.e. for any 4096 x 4097 matrix. ``sparsity = 0`` is the released ``klora`` fallback:
the kernel alone, no magnitude scaling.

Initialisation. The tables are Kaiming-uniform, so dW is not 0 at step 0 (unlike
LoRA). With ``init_offset: fold`` (default) the initial dW_s is subtracted from the
frozen base weight once at build time, so the adapted model computes exactly the
base model's function at step 0; the step-0 tables are kept (as much memory as the
adapter itself) to recompute that dW_s(0) for measurement. The learned sparse update
is then ``dW_s - dW_s(0)``, whose dense part is a constant: on a 384 x 384 layer with
q = 8 it is about 1e-5 per entry with sparsity > 0 and 1e-3 with sparsity 0, against
weights of about 3e-2. ``none`` keeps the released behaviour. With the lora kernel and
``sparsity = 0``, B starts at 0 as in LoRA; with sparsity > 0 it cannot (the magnitude
factor of a zero update is zero, so nothing would ever learn), so B is
Kaiming-uniform too.

Density. ``update_density`` counts the non-zero entries of the real weight change,
W_final - W_pretrained: ``dW_s(T) - dW_s(0)`` under ``fold``, ``dW_s(T)`` under
``none``. One competition mask keeps ``1 - sparsity`` of dW_s by construction, but
under ``fold`` the change also touches every entry of the step-0 support, so it is
denser (the union of the two supports, where the mask moved during training).

Cost. Unmerged, the branch is dense: ``2 * d_in * d_out`` FLOPs per token, plus the
kernel, ``2 * H * d_in * d_out * (q/H + 2)`` per forward call for cdist (counted
through ``Snell.flop_formulas``, which FlopCounterMode needs for cdist), plus a
selection pass. ``finalize`` merges dW_s into the base weights (``merge: true``,
the default), after which SNELL costs 0 extra FLOPs. The released code recomputes
the dense dW in backward (activation checkpointing); this one keeps it, which at
MiniLM / BERT-base sizes costs less than the activations.

The math (kernel, sparsification, layer, FLOP formulas) is in ``methods.snell.layer``,
imported when a model is built so that importing this package stays torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from methods import register
from methods.base import BuildContext, FlopFormulas, Method, MethodConfig

if TYPE_CHECKING:
    from torch import nn

    from methods.snell.layer import SnellLinear


class SnellConfig(MethodConfig):
    low_rank_dim: int = Field(8, ge=1, le=1024, description="q: width of the factor tables (LoRA-rank-q parameters)")
    sparsity: float = Field(
        0.5, ge=0.0, lt=1.0, description="s (init_thres): fraction of the update zeroed by magnitude competition"
    )
    kernel: Literal["snell", "lora"] = Field(
        "snell", description="snell: distance kernel (rank can exceed q); lora: linear kernel B A (ablation)"
    )
    num_heads: int = Field(2, ge=1, le=16, description="H: distance kernels summed with alternating signs")
    coeff: float = Field(0.1, gt=0, description="|c_h|, the fixed weight of each distance kernel")
    init_offset: Literal["fold", "none"] = Field(
        "fold", description="fold: subtract the step-0 update from W0 so training starts at the base function"
    )
    merge: bool = Field(True, description="merge the sparse update into the base weights at the end")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target_modules: list[str] | None = Field(
        None, description="module-name suffixes to adapt; default: the task's (query, value for BERT)"
    )

    @model_validator(mode="after")
    def _heads_divide_q(self) -> SnellConfig:
        if self.kernel == "snell" and self.low_rank_dim % self.num_heads:
            raise ValueError(f"low_rank_dim ({self.low_rank_dim}) must be divisible by num_heads ({self.num_heads})")
        return self


@register
class Snell(Method):
    name = "snell"
    Config = SnellConfig
    config: SnellConfig
    summary = "SNELL: distance-kernel low-rank tables, magnitude-competition sparsified update, merged after training"
    metrics: ClassVar[dict[str, str]] = {
        "update_density": "fraction of the adapted modules' weight entries that training changed: non-zero entries "
        "of W_final - W_pretrained, i.e. of dW_s(T) - dW_s(0) with init_offset fold (the step-0 and final supports "
        "together, denser than 1 - sparsity) and of dW_s(T) with none",
        "trainable_params_final": "parameters that reproduce the update: q * (d_in + d_out) per module",
        "merged_modules": "adapted modules whose update was merged into the base weights",
    }
    #: The tables and the (dense or merged) cost are fixed by the configuration;
    #: ``update_density`` depends on training.
    exact_metrics = Method.exact_metrics | {"trainable_params_final", "merged_modules"}

    def __init__(self, config: SnellConfig | None = None) -> None:
        super().__init__(config)
        self._final: dict[str, float] | None = None

    def flop_formulas(self) -> FlopFormulas:
        """The cdist kernels of the unmerged update, which FlopCounterMode does not count."""
        from methods.snell.layer import CDIST_FLOP_FORMULAS

        return CDIST_FLOP_FORMULAS

    def build(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        from methods._injection import inject_adapters
        from methods._masked_lora import seeded_generator
        from methods.snell.layer import SnellLinear

        cfg = self.config
        generator = seeded_generator(ctx.seed)
        layers = inject_adapters(
            model,
            ctx,
            cfg.target_modules,
            lambda linear: SnellLinear(
                linear,
                cfg.low_rank_dim,
                sparsity=cfg.sparsity,
                kernel=cfg.kernel,
                num_heads=cfg.num_heads,
                coeff=cfg.coeff,
                dropout=cfg.dropout,
                generator=generator,
            ),
        )
        if cfg.init_offset == "fold":
            for layer in layers.values():
                layer.fold_initial_update()
        return model

    @staticmethod
    def _layers(model: nn.Module) -> list[tuple[str, SnellLinear]]:
        from methods._injection import adapters
        from methods.snell.layer import SnellLinear

        return list(adapters(model, SnellLinear))

    def _measure(self, layers: list[SnellLinear]) -> dict[str, float]:
        import torch

        with torch.no_grad():
            nonzero = sum(int(torch.count_nonzero(layer.weight_change())) for layer in layers)
        total = sum(layer.in_features * layer.out_features for layer in layers)
        return {
            "update_density": nonzero / total if total else 0.0,
            "trainable_params_final": float(
                sum(layer.low_rank_dim * (layer.in_features + layer.out_features) for layer in layers)
            ),
        }

    def finalize(self, model: nn.Module) -> nn.Module:
        from methods._injection import replace_module

        layers = self._layers(model)
        self._final = self._measure([layer for _, layer in layers])
        self._final["merged_modules"] = float(len(layers) if self.config.merge else 0)
        if self.config.merge:
            for name, layer in layers:
                replace_module(model, name, layer.merged())
        return model

    def stats(self, model: nn.Module) -> dict[str, float]:
        if self._final is not None:
            return dict(self._final)
        return {**self._measure([layer for _, layer in self._layers(model)]), "merged_modules": 0.0}
