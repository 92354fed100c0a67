"""The per-block router of RAD-LoRA: one gate and one rank per (block, input).

u = LayerNorm(masked mean of the block input); logits = Linear(16, 1 + r_max)(GELU(
Linear(d, 16)(u))). Logit 0 is the depth gate, logits 1..r_max choose k in 1..r_max
(rank 0 is expressed by the gate only). The gate bias starts at +3 (p = 0.95).

Training (after the warmup, during which g = 1 and k = r_max):
- gate g = hard Gumbel-sigmoid sample, straight-through (correct sign);
- rank: the expected nested mask m_j = P(k >= j) early on, then a straight-through
  Gumbel-softmax one-hot y turned into m_j = sum_{k >= j} y_k. Both are
  differentiable, so the task loss reaches the rank logits (flaw 5);
- (p, E[k]) are kept for the cost term.
Inference: g = 1[p > tau], k = argmax + 1, recorded per example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods._routing import (
    RoutedUnit,
    RoutingSchedule,
    TokenMask,
    expected_rank,
    gumbel_sigmoid_st,
    gumbel_softmax_st,
    masked_mean,
    nested_mask,
    zero_example,
)

if TYPE_CHECKING:
    from methods.radlora.layer import RadLoRALinear


@dataclass
class BlockDecision:
    """What the modules of one block need for the current forward pass."""

    gate: Tensor | None = None  # (B,) training gate (straight-through value)
    mask: Tensor | None = None  # (B, r_max) training nested rank mask
    on: Tensor | None = None  # (B,) bool, inference
    rank: Tensor | None = None  # (B,) long in 1..r_max, inference
    code: Tensor | None = None  # (B, c) per-input code of the hyper generator


class BlockRouter(nn.Module, RoutedUnit):
    def __init__(
        self,
        hidden_size: int,
        router_hidden: int,
        r_max: int,
        gate_bias_init: float,
        gate_threshold: float,
        hyper_dim: int | None,
        schedule: RoutingSchedule,
        token_mask: TokenMask,
        block: str,
        modules: list[tuple[str, int]],
    ) -> None:
        nn.Module.__init__(self)
        self.init_unit(block, modules, r_max)
        self.norm = nn.LayerNorm(hidden_size)
        self.fc_in = nn.Linear(hidden_size, router_hidden)
        self.fc_out = nn.Linear(router_hidden, 1 + r_max)
        with torch.no_grad():
            self.fc_out.bias.zero_()
            self.fc_out.bias[0] = gate_bias_init
        self.code = nn.Linear(hidden_size, hyper_dim) if hyper_dim else None
        self.r_max = r_max
        self.gate_threshold = gate_threshold
        self.schedule = schedule
        self.token_mask = token_mask
        self.decision: BlockDecision | None = None
        #: (p, E[k]) of the last training forward, with their graph, for the cost term
        self.cost_terms: tuple[Tensor, Tensor] | None = None
        #: the block's adapted layers (``RadLoRALinear``), which register themselves; a
        #: plain list, so the block, not the router, owns them as submodules
        self.layers: list[RadLoRALinear] = []

    def block_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook of the block: route on its input hidden states."""
        hidden = args[0] if args else kwargs["hidden_states"]
        self.decision = self(hidden)

    def forward(self, hidden: Tensor) -> BlockDecision:
        tokens = self.token_mask.for_input(hidden)
        logits, code = self.scores(hidden, tokens)
        gate_logit, rank_logits = logits[:, 0], logits[:, 1:]
        if not self.training:
            on = torch.sigmoid(gate_logit) > self.gate_threshold
            on, rank = self.hard_decision(on, rank_logits.argmax(-1) + 1, tokens)
            return BlockDecision(on=on, rank=rank, code=code)
        prob, rank_probs = torch.sigmoid(gate_logit), rank_logits.softmax(-1)
        self.cost_terms = (prob, expected_rank(rank_probs)) if torch.is_grad_enabled() else None
        schedule = self.schedule
        if schedule.in_warmup:
            gate = torch.ones_like(gate_logit)
            mask = torch.ones_like(rank_logits)
        else:
            gate = gumbel_sigmoid_st(gate_logit, schedule.temperature)
            onehot = rank_probs if schedule.rank_expected else gumbel_softmax_st(rank_logits, schedule.temperature)
            mask = nested_mask(onehot)
        return BlockDecision(gate=gate, mask=mask, code=code)

    def scores(self, hidden: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        """(logits (B, 1 + r_max), code (B, c) or None) from the block input's real ``tokens``."""
        pooled = self.norm(masked_mean(hidden, tokens))
        logits = self.fc_out(F.gelu(self.fc_in(pooled)))
        return logits, self.code(pooled) if self.code is not None else None

    def run_router(self, tokens: int) -> None:
        hidden = zero_example(self.fc_in.weight, tokens, self.fc_in.in_features)
        self.scores(hidden, torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device))

    def run_adapters(self, rank: int, tokens: int) -> None:
        code = (
            None
            if self.code is None
            else torch.zeros(1, self.code.out_features, device=self.fc_in.weight.device, dtype=self.fc_in.weight.dtype)
        )
        for layer in self.layers:
            layer.run_sliced(rank, tokens, code)

    @property
    def cost(self) -> int:
        """c_l: adapter FLOPs per token and rank of the block's modules, sum of 2 (d_in + d_out)."""
        return sum(c for _, c in self.gated_modules)
