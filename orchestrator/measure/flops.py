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

Basis. A static adapter costs the same per token on every input, so the trainer counts
it on a fixed probe of validation examples. A routed adapter's cost depends on each
example's decisions, so its final figure covers every example of the final evaluation:
``TokenAffineFlops`` holds the FlopCounterMode count of one path (a router, or the
adapters a decision switches on at rank k) on one example, as a function of its tokens,
and ``methods._routing_stats.routed_adapter_flops`` sums it over the recorded decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def count_call_flops(run: Callable[[], object]) -> int:
    """FLOPs FlopCounterMode counts while ``run()`` runs (no gradients)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=dict(EXTRA_FLOP_FORMULAS)) as counter:
        run()
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class TokenAffineFlops:
    """FLOPs of one computation on one example of T real tokens: ``per_example + per_token * T``.

    The paths of a routed adapter are affine in T: every matmul in them has the
    example's tokens as one dimension (LoRA factors, the masked mean of a router) or
    none (a router's MLP on the pooled vector, a generator on the per-example code).
    """

    per_example: int
    per_token: int

    def at(self, tokens: int) -> int:
        return self.per_example + self.per_token * tokens

    def total(self, tokens_per_example: "torch.Tensor") -> int:
        """Summed over examples with these token counts (a 1-D integer tensor)."""
        return self.per_example * int(tokens_per_example.numel()) + self.per_token * int(tokens_per_example.sum())


def token_affine_flops(run: Callable[[int], object], check_at: int = 3) -> TokenAffineFlops:
    """Count ``run(T)`` (one example of T tokens) with FlopCounterMode at T = 1 and 2,
    and check the affine form exactly at T = ``check_at`` (use the longest example it is
    applied to). A path that is not affine in T raises instead of being mis-priced."""
    one, two = count_call_flops(lambda: run(1)), count_call_flops(lambda: run(2))
    affine = TokenAffineFlops(per_example=2 * one - two, per_token=two - one)
    check_at = max(3, check_at)
    counted = count_call_flops(lambda: run(check_at))
    if counted != affine.at(check_at):
        raise ValueError(
            f"FLOPs of this path are not affine in the tokens: {one} at 1 token, {two} at 2, "
            f"{counted} at {check_at} (expected {affine.at(check_at)})"
        )
    return affine
