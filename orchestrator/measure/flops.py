"""Adapter FLOPs, measured with ``torch.utils.flop_counter.FlopCounterMode``.

Definitions (METHODS.md section 8):

- ``adapter_flops_per_<unit>``: FLOPs of the adapted model minus FLOPs of the frozen
  base on the same examples, divided by the units they hold: the task type's
  ``flop_unit``, non-pad tokens for text (``adapter_flops_per_token``), images for
  image classification (``adapter_flops_per_image``). Routers and weight generators
  count; work multiplied by zero counts too, so only real skips save.
- ``flops_ratio``: that over unmerged LoRA r=8 on the same target modules, whose cost
  is exactly 2 * 8 * (d_in + d_out) per token and module (verified in the tests against
  a FlopCounterMode count of a real peft LoRA), times the tokens per unit (1 for text;
  for a ViT, every patch token and the CLS token pass every adapted linear), so both
  sides of the ratio are in the same unit.

What the model's inputs are (token ids and masks, pixels) is the task type's
(``orchestrator.tasks.types``: ``flop_probe``); this module counts whatever it is given.

FlopCounterMode sees matmul-type ops only; a method whose model uses other costly ops
(cdist, say) declares formulas for them (``Method.flop_formulas``), and the caller hands
them to every count here: nothing is registered globally, so what one method declares
never changes another's counts.

The engine reads what methods declare and never the reverse: the counter itself
(``methods.flop_count``), the reference rank and the layer shapes (``methods.base``)
belong to the method interface, because methods use them too (``analytic_costs``,
routed methods pricing their own decisions).

Basis. A static adapter costs the same per token on every input, so the trainer counts
it on a fixed probe of validation examples. A routed adapter's cost depends on each
example's decisions, so its final figure covers every example of the final evaluation
(``methods._routing_stats.routed_adapter_flops``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from methods.base import REFERENCE_RANK, linear_shapes
from methods.flop_count import count_call_flops

if TYPE_CHECKING:
    import torch
    from torch import nn

    from methods.base import FlopFormulas


def count_flops(model: nn.Module, batch: dict[str, torch.Tensor], formulas: FlopFormulas | None = None) -> int:
    """Total FLOPs of one forward pass of ``model`` on ``batch``'s inputs (``labels``
    left out, so no loss is counted; no gradients), with the method's ``formulas`` for
    ops FlopCounterMode does not know."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    was_training = model.training
    model.eval()
    try:
        return count_call_flops(lambda: model(**inputs), formulas)
    finally:
        model.train(was_training)


def count_flops_unpadded(
    model: nn.Module, examples: list[dict[str, torch.Tensor]], formulas: FlopFormulas | None = None
) -> int:
    """Total FLOPs over examples run one at a time (``TaskType.flop_probe``: unpadded)."""
    return sum(count_flops(model, example, formulas) for example in examples)


def reference_lora_flops_per_token(model: nn.Module, target_modules: list[str], rank: int = REFERENCE_RANK) -> int:
    """Unmerged LoRA-r8 adapter FLOPs per token on ``target_modules``: sum of 2r(d_in+d_out)."""
    return sum(2 * rank * (d_in + d_out) for _, d_in, d_out in linear_shapes(model, target_modules))


def adapter_flops_per_unit(base_flops: int, adapted_flops: int, units: int) -> float:
    """Per unit (non-pad token, image); clipped at 0 because merged adapters cost exactly nothing."""
    return max(0, adapted_flops - base_flops) / max(1, units)
