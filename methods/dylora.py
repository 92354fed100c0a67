"""DyLoRA: one adapter trained for every rank at once (Valipour et al., 2023).

Each optimizer step samples one rank ``b ~ U{r_min..r_max}`` (per step, shared by all
modules, not per example) and trains the truncated update::

    y = W0 x + (alpha / b) * B[:, :b] A[:b] x

so the ranks end up nested: the first b rows and columns form a usable rank-b adapter
for every b. In ``frozen`` mode only row/column b gets a gradient at that step (the
paper's cheaper variant); by default all of the first b do. Components past b (and,
in frozen mode, before b) get a zero gradient, but the engine's single AdamW still
moves them by its momentum and decoupled decay, as with the reference code's one
optimizer.

Evaluating at several ranks from one trained adapter. Which rank the eval-mode
forward uses is ``eval_rank`` (default ``r_max``), reported as the ``eval_rank``
metric. After its final evaluation the engine calls ``extra_evaluations``, which runs
the same evaluation again at every rank in ``eval_ranks`` (``val_accuracy_r2``... in a
search trial, ``test_accuracy_r2``... in a confirmation run). Two entry points:

- ``set_rank(model, b)`` (module function): every DyLoRA layer runs rank b in eval
  mode from now on; returns the previous rank.
- ``DyLoRA.evaluate_at_ranks(model, evaluate)``: for each b in ``eval_ranks``, set b,
  call ``evaluate(model) -> {"val_accuracy": ...}``, and return the metrics renamed
  ``<metric>_r<b>`` (``val_accuracy_r2``...); the eval rank is restored afterwards.
  The names are declared in ``metrics`` for ranks 1..64 that are powers of two, for
  the task metrics the engine reports.

Eval-mode FLOPs follow the eval rank: the forward slices to b, so an adapter
evaluated at b costs ``2 * b * (d_in + d_out)`` per token and module.

Parameter counts (METHODS.md section 8). The engine's ``trainable_params`` is what the
optimizer holds, r_max * sum(d_in + d_out): every row is trained at some step, but the
adapter evaluated (and the one worth storing) has only ``eval_rank`` rows. Claims about
the adapter's size read ``trainable_params_final``, eval_rank * sum(d_in + d_out);
``trainable_params_peak`` and ``trainable_params_mean`` are the most and the mean of the
rows that received a gradient in one step (b rows; 1 in frozen mode), times the
parameters per rank.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, model_validator

from methods import register
from methods.base import BuildContext, Method, MethodConfig, StepInfo

if TYPE_CHECKING:
    import torch
    from torch import nn

_REPORTED_RANKS = (1, 2, 4, 8, 16, 32, 64)
_TASK_METRICS = tuple(
    f"{split}_{name}"
    for split in ("val", "test")
    for name in ("accuracy", "f1", "mcc", "exact_match", "perplexity", "loss")
)


class DyLoraConfig(MethodConfig):
    r_max: int = Field(8, ge=1, le=256, description="largest rank trained (factors allocated at this width)")
    r_min: int = Field(1, ge=1, le=256, description="smallest rank sampled")
    lora_alpha: float = Field(16.0, gt=0, description="scaling numerator: s = alpha / b for the sampled rank b")
    frozen: bool = Field(False, description="update only row/column b at each step (DyLoRA-frozen)")
    eval_rank: int | None = Field(None, ge=1, le=256, description="rank used in evaluation (default r_max)")
    eval_ranks: list[int] = Field(
        [1, 2, 4, 8],  # a literal default (pydantic copies it) so `orchestrate methods` can show it
        description="ranks evaluate_at_ranks reports (those above r_max are skipped)",
    )
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target_modules: list[str] | None = Field(
        None, description="module-name suffixes to adapt; default: the task's (query, value for BERT)"
    )

    @model_validator(mode="after")
    def _ranks_in_range(self) -> DyLoraConfig:
        if self.r_min > self.r_max:
            raise ValueError(f"r_min ({self.r_min}) must not exceed r_max ({self.r_max})")
        if self.eval_rank is not None and self.eval_rank > self.r_max:
            raise ValueError(f"eval_rank ({self.eval_rank}) must not exceed r_max ({self.r_max})")
        if any(b < 1 for b in self.eval_ranks):
            raise ValueError(f"eval_ranks must be >= 1, got {self.eval_ranks}")
        return self


def _dylora_layers(model: nn.Module):
    from methods._injection import adapters
    from methods._masked_lora import MaskedLoraLinear

    return [layer for _, layer in adapters(model, MaskedLoraLinear) if layer.scale_by == "rank"]


def set_rank(model: nn.Module, rank: int) -> int:
    """Make every DyLoRA layer of ``model`` run rank ``rank`` in eval mode; returns the
    previous eval rank (of the first layer)."""
    layers = _dylora_layers(model)
    if not layers:
        raise ValueError("model has no DyLoRA layers")
    previous = layers[0].eval_rank if layers[0].eval_rank is not None else layers[0].r_max
    for layer in layers:
        if not 1 <= rank <= layer.r_max:
            raise ValueError(f"rank must be in [1, {layer.r_max}], got {rank}")
        layer.eval_rank = rank
    return previous


@register
class DyLoRA(Method):
    name = "dylora"
    Config = DyLoraConfig
    config: DyLoraConfig
    summary = "DyLoRA: nested ranks, one rank b ~ U{r_min..r_max} trained per step, any b usable at inference"
    metrics: ClassVar[dict[str, str]] = {
        "eval_rank": "rank every adapted module runs at in evaluation",
        "total_rank": "sum of evaluation ranks over adapted modules",
        "trainable_params_final": "adapter parameters of the evaluated rank, what inference uses and a saved "
        "adapter needs: eval_rank * sum(d_in + d_out) (the engine's trainable_params counts all r_max rows)",
        "trainable_params_peak": "most adapter parameters given a gradient in one step: max over steps of "
        "b * sum(d_in + d_out) (frozen mode: one row per step)",
        "trainable_params_mean": "mean over steps of the adapter parameters given a gradient "
        "(b * sum(d_in + d_out); frozen mode: one row)",
        "mean_train_rank": "mean of the ranks sampled during training",
        **{
            f"{metric}_r{b}": f"{metric} with every module evaluated at rank {b} (evaluate_at_ranks)"
            for b in _REPORTED_RANKS
            for metric in _TASK_METRICS
        },
    }
    #: Evaluation runs at the fixed eval_rank, so FLOPs and the final count are fixed;
    #: the peak, mean and mean_train_rank follow the seeded rank draws.
    exact_metrics = Method.exact_metrics | {"eval_rank", "total_rank", "trainable_params_final"}

    def __init__(self, config: DyLoraConfig | None = None) -> None:
        super().__init__(config)
        self.rank_samples: list[int] = []
        self._generator: torch.Generator | None = None

    @property
    def eval_rank(self) -> int:
        return self.config.eval_rank or self.config.r_max

    def build(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        from methods._masked_lora import inject_masked_lora, seeded_generator

        self._generator = generator = seeded_generator(ctx.seed)
        inject_masked_lora(model, ctx, self.config, generator, scale_by="rank")
        set_rank(model, self.eval_rank)
        self._sample_rank(model)
        return model

    def sample_rank(self) -> int:
        """One draw of b ~ U{r_min..r_max} from the method's seeded generator."""
        import torch

        low, high = self.config.r_min, self.config.r_max
        return int(torch.randint(low, high + 1, (1,), generator=self._generator).item())

    def _sample_rank(self, model: nn.Module) -> None:
        b = self.sample_rank()
        self.rank_samples.append(b)
        for layer in _dylora_layers(model):
            layer.rank = b
            layer.frozen_prefix = b - 1 if self.config.frozen else 0

    def after_optimizer_step(self, model: nn.Module, step: StepInfo) -> None:
        self._sample_rank(model)  # the rank of the next step

    def evaluate_at_ranks(
        self, model: nn.Module, evaluate: Callable[[nn.Module], dict[str, float]]
    ) -> dict[str, float]:
        """Run ``evaluate`` once per rank in ``eval_ranks`` (<= r_max); metrics come back
        as ``<name>_r<b>``. The eval rank in force before the call is restored."""
        previous = set_rank(model, self.eval_rank)
        results: dict[str, Any] = {}
        try:
            for b in self.config.eval_ranks:
                if b > self.config.r_max:
                    continue
                set_rank(model, b)
                for key, value in evaluate(model).items():
                    results[f"{key}_r{b}"] = float(value)
        finally:
            set_rank(model, previous)
        return results

    def extra_evaluations(
        self, model: nn.Module, evaluate: Callable[[nn.Module], dict[str, float]]
    ) -> dict[str, float]:
        """The engine's final evaluation again at every rank in ``eval_ranks``."""
        return self.evaluate_at_ranks(model, evaluate)

    def end_eval_stats(self, model: nn.Module) -> dict[str, float]:
        layers = _dylora_layers(model)
        return {"eval_rank": float(layers[0].eval_rank or layers[0].r_max)} if layers else {}

    def trained_rows(self, sampled_rank: int) -> int:
        """Rows of A (columns of B) a step at ``sampled_rank`` gives a gradient."""
        return 1 if self.config.frozen else sampled_rank

    def stats(self, model: nn.Module) -> dict[str, float]:
        layers = _dylora_layers(model)
        ranks = [layer.eval_rank or layer.r_max for layer in layers]
        per_rank = sum(layer.active_params(1) for layer in layers)
        # The last sample is drawn after the final step and never trained.
        trained = self.rank_samples[:-1] or self.rank_samples
        rows = [self.trained_rows(b) for b in trained] or [0]
        return {
            "eval_rank": float(ranks[0]) if ranks else 0.0,
            "total_rank": float(sum(ranks)),
            "trainable_params_final": float(
                sum(layer.active_params(r) for r, layer in zip(ranks, layers, strict=True))
            ),
            "trainable_params_peak": float(max(rows) * per_rank),
            "trainable_params_mean": sum(rows) / len(rows) * per_rank,
            "mean_train_rank": sum(trained) / len(trained) if trained else 0.0,
        }
