"""Adapter FLOPs, measured with ``torch.utils.flop_counter.FlopCounterMode``.

Definitions (METHODS.md section 8):

- ``adapter_flops_per_token``: FLOPs of the adapted model minus FLOPs of the frozen
  base on the same batch, divided by the number of non-pad tokens. Routers and weight
  generators count; work multiplied by zero counts too, so only real skips save.
- ``flops_ratio``: that over unmerged LoRA r=8 on the same target modules, whose cost
  is exactly 2 * 8 * (d_in + d_out) per token and module (verified in the tests against
  a FlopCounterMode count of a real peft LoRA).

FlopCounterMode sees matmul-type ops only; methods that use other costly ops (cdist,
say) register them in ``EXTRA_FLOP_FORMULAS`` so they are counted too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch
    from torch import nn

REFERENCE_RANK = 8

#: aten op -> FLOP formula ``f(*args, out_val=..., **kwargs) -> int`` (FlopCounterMode's
#: custom_mapping signature), for ops the counter does not know. Methods add entries.
EXTRA_FLOP_FORMULAS: dict[Any, Callable[..., int]] = {}


def count_flops(model: "nn.Module", batch: dict[str, "torch.Tensor"]) -> int:
    """Total FLOPs of one forward pass of ``model`` on ``batch`` (no gradients)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=dict(EXTRA_FLOP_FORMULAS)) as counter:
            model(**inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def non_pad_tokens(batch: dict[str, "torch.Tensor"]) -> int:
    return int(batch["attention_mask"].sum().item())


def unpadded_examples(batch: dict[str, "torch.Tensor"]) -> list[dict[str, "torch.Tensor"]]:
    """Each example of ``batch`` as its own batch of one, padding removed, so that
    FLOPs per token are exact (padding would inflate them)."""
    examples = []
    for row in range(batch["input_ids"].shape[0]):
        length = int(batch["attention_mask"][row].sum())
        examples.append({k: v[row : row + 1, :length] for k, v in batch.items() if v.dim() == 2})
    return examples


def count_flops_unpadded(model: "nn.Module", examples: list[dict[str, "torch.Tensor"]]) -> int:
    """Total FLOPs over examples run one at a time (see ``unpadded_examples``)."""
    return sum(count_flops(model, example) for example in examples)


def linear_shapes(model: "nn.Module", suffixes: list[str]) -> list[tuple[str, int, int]]:
    """(name, d_in, d_out) of every nn.Linear whose name ends with one of ``suffixes``.

    Matches peft's rule for a list of target modules (exact name or ``.suffix``), and
    looks through peft wrappers to the base layer.
    """
    from torch import nn

    found = []
    for name, module in model.named_modules():
        base = getattr(module, "base_layer", module)
        if not isinstance(base, nn.Linear) or ".base_layer" in name or "lora_" in name:
            continue
        if any(name == s or name.endswith("." + s) for s in suffixes):
            found.append((name, base.in_features, base.out_features))
    return found


def reference_lora_flops_per_token(model: "nn.Module", target_modules: list[str], rank: int = REFERENCE_RANK) -> int:
    """Unmerged LoRA-r8 adapter FLOPs per token on ``target_modules``: sum of 2r(d_in+d_out)."""
    return sum(2 * rank * (d_in + d_out) for _, d_in, d_out in linear_shapes(model, target_modules))


def adapter_flops_per_token(base_flops: int, adapted_flops: int, tokens: int) -> float:
    """Per non-pad token; clipped at 0 because merged adapters cost exactly nothing."""
    return max(0, adapted_flops - base_flops) / max(1, tokens)
