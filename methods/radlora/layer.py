"""The adapted linear layer of RAD-LoRA: routed nested LoRA, static or generated factors.

y_b = W0 x + g_b * s * B_b ((A_b x) * m_b), with s = alpha / sqrt(r_max) fixed, so
choosing a smaller k never rescales the directions already learned. The ranks are
nested: the first k rows of A and columns of B form the rank-k adapter.

``generator: static``: A_b = A, B_b = B, shared by every input (r_max (d_in + d_out)
parameters per module).

``generator: hyper`` - the seed's HyperLoRA, made to fit. The seed maps the pooled
input linearly to all (d_in + d_out) r_max entries of A and B: d (d_in + d_out) r_max
weights per module, about 1.02 billion for BERT-base (flaw 7). Here the block's router
first compresses its pooled, normalised input u into a code z = W_z u + b_z in R^c
(one per block), and each module generates a low-rank correction of its static
factors from it:

    A_b = A + reshape(G_A z),   B_b^T = B^T + reshape(G_B z),
    G_A in R^{(r_max d_in) x c},  G_B in R^{(r_max d_out) x c}, both zero at init.

Generator parameters (exactly; ``hyper_param_count`` below, tested):

    P_hyper = sum_blocks c (d + 1)  +  sum_modules c r_max (d_in + d_out)

(for BERT-base, q and v, c = 4, r_max = 8: 12 * 3,076 + 24 * 49,152 = 1,216,560,
instead of ~226M for the seed's map on the same modules). Generating the first k
ranks of A_b and B_b costs 2 c k (d_in + d_out) FLOPs per active example and module,
counted by FlopCounterMode like everything else; per-example weights cannot be merged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods._routing import add_routed, init_lora_factors, zero_example
from methods.radlora.router import BlockDecision, BlockRouter


class RadLoRALinear(nn.Module):
    """A frozen ``base_layer`` plus routed nested factors ``radlora_A``, ``radlora_B``
    (and generators ``radlora_GA``, ``radlora_GB`` when ``hyper_dim`` is set)."""

    router: BlockRouter  # set past nn.Module's registration, see __init__
    radlora_GA: nn.Parameter | None
    radlora_GB: nn.Parameter | None

    def __init__(self, base: nn.Linear, r_max: int, scale: float, router: BlockRouter, hyper_dim: int | None) -> None:
        super().__init__()
        self.base_layer = base
        self.r_max, self.scale = r_max, scale
        self.radlora_A, self.radlora_B = init_lora_factors(r_max, base.in_features, base.out_features)
        if hyper_dim:
            self.radlora_GA = nn.Parameter(torch.zeros(r_max * base.in_features, hyper_dim))
            self.radlora_GB = nn.Parameter(torch.zeros(r_max * base.out_features, hyper_dim))
        else:
            self.radlora_GA = self.radlora_GB = None
        # The router is a child of the block, not of this layer: bypass registration.
        object.__setattr__(self, "router", router)
        router.layers.append(self)

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        decision = self.router.decision
        if decision is None:
            return out
        if decision.on is not None and decision.rank is not None:  # inference: real skipping
            tokens = self.router.token_mask.for_input(x)
            return add_routed(
                out,
                x,
                tokens,
                decision.on,
                decision.rank,
                lambda rows, k, ex: self._sliced(rows, k, ex, decision.code),
            )
        return out + self._dense(x, decision)

    def dense_reference(self, x: Tensor, gate: Tensor, mask: Tensor, code: Tensor | None) -> Tensor:
        """The adapter on every example with the gate and rank mask multiplied in
        (no skipping): what training computes, and the tests' reference."""
        gate_mask = gate[:, None] * mask  # (B, r_max)
        if code is None:
            hidden = F.linear(x, self.radlora_A) * gate_mask[:, None, :]
            return self.scale * F.linear(hidden, self.radlora_B)
        a, bt = self.generate(code, self.r_max)
        hidden = torch.bmm(x, a.transpose(1, 2)) * gate_mask[:, None, :]
        return self.scale * torch.bmm(hidden, bt)

    def _dense(self, x: Tensor, decision: BlockDecision) -> Tensor:
        assert decision.gate is not None and decision.mask is not None  # a training decision
        return self.dense_reference(x, decision.gate, decision.mask, decision.code)

    def generate(self, code: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Per-input factors for ranks 1..k: A_b (n, k, d_in) and B_b^T (n, k, d_out)."""
        d_in, d_out, n = self.base_layer.in_features, self.base_layer.out_features, code.shape[0]
        assert self.radlora_GA is not None and self.radlora_GB is not None  # a code exists only with hyper_dim
        a = self.radlora_A[:k] + F.linear(code, self.radlora_GA[: k * d_in]).view(n, k, d_in)
        bt = self.radlora_B[:, :k].t() + F.linear(code, self.radlora_GB[: k * d_out]).view(n, k, d_out)
        return a, bt

    def _sliced(self, rows: Tensor, k: int, example: Tensor, code: Tensor | None) -> Tensor:
        """Rank-k update of gathered rows: only the first k rank columns are computed."""
        if code is None:
            return self.scale * F.linear(F.linear(rows, self.radlora_A[:k]), self.radlora_B[:, :k])
        ids, counts = torch.unique_consecutive(example, return_counts=True)
        a, bt = self.generate(code[ids], k)
        parts = [chunk @ a[i].t() @ bt[i] for i, chunk in enumerate(rows.split(counts.tolist()))]
        return self.scale * torch.cat(parts)

    def run_sliced(self, k: int, tokens: int, code: Tensor | None) -> None:
        """The rank-k path inference runs for one active example of ``tokens`` tokens
        (zero inputs; ``code`` (1, c) when generated), for FLOP counting."""
        rows = zero_example(self.radlora_A, tokens, self.base_layer.in_features)[0]
        self._sliced(rows, k, torch.zeros(tokens, dtype=torch.long, device=rows.device), code)


def hyper_param_count(blocks: list[int], modules: list[tuple[int, int]], r_max: int, hyper_dim: int) -> int:
    """Generator parameters: sum over blocks (hidden size d) of c (d + 1), plus sum over
    modules (d_in, d_out) of c r_max (d_in + d_out)."""
    return sum(hyper_dim * (d + 1) for d in blocks) + sum(hyper_dim * r_max * (i + o) for i, o in modules)
