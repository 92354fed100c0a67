"""FlopCounterMode with a method's own formulas: the one FLOP counter of the project.

Here, on the methods' side, because routed methods count their own paths: a routed
adapter's cost depends on each example's decisions, so ``end_eval_stats`` prices the
decisions it recorded (``methods._routing_stats.routed_adapter_flops``) with
``token_affine_flops``. The engine's whole-model counts
(``orchestrator.measure.flops.count_flops``) run through ``count_call_flops`` too, so
both sides count the same ops the same way; the engine imports this module, never the
reverse.

FlopCounterMode sees matmul-type ops only; a method whose model uses other costly ops
declares their formulas (``Method.flop_formulas``) and every count of its model is
given them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from methods.base import FlopFormulas


def count_call_flops(run: Callable[[], object], formulas: FlopFormulas | None = None) -> int:
    """FLOPs FlopCounterMode counts while ``run()`` runs (no gradients), with ``formulas``
    for the ops it does not know."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=dict(formulas or {})) as counter:
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

    def total(self, tokens_per_example: torch.Tensor) -> int:
        """Summed over examples with these token counts (a 1-D integer tensor)."""
        return self.per_example * int(tokens_per_example.numel()) + self.per_token * int(tokens_per_example.sum())


def token_affine_flops(
    run: Callable[[int], object], check_at: int = 3, formulas: FlopFormulas | None = None
) -> TokenAffineFlops:
    """Count ``run(T)`` (one example of T tokens) with FlopCounterMode at T = 1 and 2,
    and check the affine form exactly at T = ``check_at`` (use the longest example it is
    applied to). A path that is not affine in T raises instead of being mis-priced."""
    one = count_call_flops(lambda: run(1), formulas)
    two = count_call_flops(lambda: run(2), formulas)
    affine = TokenAffineFlops(per_example=2 * one - two, per_token=two - one)
    check_at = max(3, check_at)
    counted = count_call_flops(lambda: run(check_at), formulas)
    if counted != affine.at(check_at):
        raise ValueError(
            f"FLOPs of this path are not affine in the tokens: {one} at 1 token, {two} at 2, "
            f"{counted} at {check_at} (expected {affine.at(check_at)})"
        )
    return affine
