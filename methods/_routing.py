"""Shared machinery of the gated and routed LoRA methods (galora, cogalora, radlora).

What lives here, and why it is shared:

- **Layers**: the transformer block a module belongs to (one router per block) and
  LoRA factors initialised as peft does. Injection itself is ``methods._injection``.
- **Straight-through gates** with the correct sign, ``hard - soft.detach() + soft``
  (the seed sketch had ``hard + p.detach() - p``, whose gradient is -1: METHODS.md
  section 6, flaw 1), Gumbel-sigmoid and nested rank masks.
- **Masked mean pooling** of a block or module input (padding excluded: flaw 8), done
  as a ``bmm`` so that FlopCounterMode counts its 2*T*d FLOPs per example.
- **Real skipping at inference** (flaw 10): ``add_routed`` gathers the real tokens of
  the examples whose gate is on, buckets them by rank k, computes only the first k
  rank columns and ``index_add``s the result back. Gated-off examples and padding
  cost nothing, so FlopCounterMode shows the saving.
- **The routing schedule** (warmup with everything on, temperature annealing) and
  **forced routing** (benchmarks and tests set the fraction of active examples).

Per-example statistics and the heatmap are in ``methods._routing_stats``.
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from torch import Tensor


# -- layers ----------------------------------------------------------------------------
def block_of(name: str) -> str:
    """The transformer block a module belongs to: the prefix up to the first numbered
    path component (``bert.encoder.layer.3.attention.self.query`` -> ``...layer.3``;
    T5's ``encoder.block.3.layer.0.SelfAttention.q`` -> ``encoder.block.3``)."""
    match = re.search(r"\.\d+(?=\.)", name)
    return name[: match.end()] if match else ""


def init_lora_factors(r: int, d_in: int, d_out: int) -> tuple[nn.Parameter, nn.Parameter]:
    """A as peft initialises it (Kaiming-uniform, a=sqrt 5), B = 0: the update starts at 0."""
    a = torch.empty(r, d_in)
    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    return nn.Parameter(a), nn.Parameter(torch.zeros(d_out, r))


# -- padding mask -----------------------------------------------------------------------
class TokenMask:
    """Holds the 2-D ``attention_mask`` of the current forward pass.

    Installed as a forward pre-hook on the root model, so wrappers deep inside the
    encoder (which only see hidden states) know which tokens are padding. A callable
    object, not a closure: deep copies of the model copy it consistently.
    """

    def __init__(self) -> None:
        self.mask: Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
            mask = args[1]
        self.mask = mask

    def for_input(self, x: Tensor) -> Tensor:
        """(B, T) bool mask matching ``x`` (B, T, d); all True when unknown."""
        mask = self.mask
        if mask is None or mask.dim() != 2 or tuple(mask.shape) != tuple(x.shape[:2]):
            return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return mask.to(device=x.device).bool()

    @staticmethod
    def install(model: nn.Module) -> TokenMask:
        holder = TokenMask()
        model.register_forward_pre_hook(holder, with_kwargs=True)
        return holder


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` (B, T, d) over the real tokens of ``mask`` (B, T): one bmm, 2*B*T*d FLOPs."""
    weights = mask.to(x.dtype).unsqueeze(1)
    return torch.bmm(weights, x).squeeze(1) / weights.sum(-1).clamp_min(1.0)


# -- gates --------------------------------------------------------------------------------
def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """Forward value ``hard``, gradient of ``soft``: d out / d soft = +1."""
    return hard - soft.detach() + soft


def bernoulli_st(prob: Tensor) -> Tensor:
    """A {0,1} sample of Bernoulli(prob) whose gradient flows to prob unchanged."""
    return straight_through(torch.bernoulli(prob.detach()), prob)


def gumbel_sigmoid_st(logit: Tensor, temperature: float) -> Tensor:
    """Hard Gumbel-sigmoid (binary concrete) sample with a straight-through gradient."""
    u = torch.rand_like(logit).clamp(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logit + torch.log(u) - torch.log1p(-u)) / temperature)
    return straight_through((soft > 0.5).to(soft.dtype), soft)


def gumbel_softmax_st(logits: Tensor, temperature: float) -> Tensor:
    """One-hot Gumbel-softmax sample with a straight-through gradient."""
    gumbel = -torch.empty_like(logits).exponential_().log()
    soft = ((logits + gumbel) / temperature).softmax(-1)
    hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return straight_through(hard, soft)


def nested_mask(onehot_or_probs: Tensor) -> Tensor:
    """m_j = sum_{k >= j} y_k over ranks k = 1..r (last axis).

    For a one-hot y at rank k this keeps exactly the first k rank columns; for a
    probability vector it is P(k >= j), whose sum is E[k].
    """
    return onehot_or_probs.flip(-1).cumsum(-1).flip(-1)


def expected_rank(probs: Tensor) -> Tensor:
    """E[k] for probabilities over k = 1..r on the last axis."""
    ranks = torch.arange(1, probs.shape[-1] + 1, device=probs.device, dtype=probs.dtype)
    return (probs * ranks).sum(-1)


# -- schedule -----------------------------------------------------------------------------
@dataclass
class RoutingSchedule:
    """Where training stands, for the gates: warmup, temperature, rank relaxation.

    During the first ``warmup_fraction`` of the optimizer steps every gate is on and
    every rank is full (the adapters learn something before routing starts, and the
    budget penalty is off). Then the Gumbel temperature decays geometrically from
    ``tau_start`` to ``tau_end`` by the end of training. Until ``expected_until``
    (fraction of all steps) the rank uses the expected nested mask P(k >= j), a
    deterministic relaxation; after it, straight-through Gumbel-softmax samples.
    """

    total_steps: int
    warmup_fraction: float = 0.1
    tau_start: float = 1.0
    tau_end: float = 0.1
    expected_until: float = 0.0
    step: int = 0

    @property
    def progress(self) -> float:
        return min(1.0, self.step / max(1, self.total_steps))

    @property
    def in_warmup(self) -> bool:
        return self.progress < self.warmup_fraction

    @property
    def rank_expected(self) -> bool:
        return self.progress < self.expected_until

    @property
    def temperature(self) -> float:
        span = max(1e-9, 1.0 - self.warmup_fraction)
        q = min(1.0, max(0.0, (self.progress - self.warmup_fraction) / span))
        return self.tau_start * (self.tau_end / self.tau_start) ** q


@dataclass
class ForcedRouting:
    """Override the hard inference decisions: each (example, unit) is on with
    probability ``activity`` (seeded), at rank ``rank`` (None: the unit's full rank;
    0: a uniformly drawn rank in 1..full rank)."""

    activity: float
    rank: int | None = None
    seed: int = 0

    def decide(self, batch: int, full_rank: int, device: torch.device) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        self.seed += 1  # the next call (the next unit or batch) draws differently
        on = torch.rand(batch, generator=gen) < self.activity
        if self.rank == 0:
            rank = torch.randint(1, full_rank + 1, (batch,), generator=gen)
        else:
            rank = torch.full((batch,), min(self.rank or full_rank, full_rank), dtype=torch.long)
        return on.to(device), rank.to(device)


class HardDecisions(NamedTuple):
    """The hard inference decisions of one unit on one batch, per example (all (B,), on CPU)."""

    on: Tensor  # bool: the unit's adapters ran
    rank: Tensor  # long: the rank they ran at
    tokens: Tensor  # long: the example's real (non-pad) tokens


class RoutedUnit(abc.ABC):
    """Mixin of whatever makes one routing decision per example (a block router, or a
    gated module): recording of the hard decisions and forced routing.

    ``gated_modules`` lists the adapted modules the decision applies to, with their cost
    c = 2 (d_in + d_out) per rank and token.

    ``run_router`` and ``run_adapters`` let ``methods._routing_stats.routed_adapter_flops``
    price the recorded decisions exactly: each runs, on one zero example of ``tokens``
    real tokens, the same code inference runs for one example, so FlopCounterMode counts
    the same ops: what the unit computes for every example (its router), and what a
    decision "on at rank k" adds (the adapters it gates).
    """

    block: str
    gated_modules: list[tuple[str, int]]
    full_rank: int

    def init_unit(self, block: str, modules: list[tuple[str, int]], full_rank: int) -> None:
        self.block, self.gated_modules, self.full_rank = block, modules, full_rank
        self.recording = False
        self.decisions: list[HardDecisions] = []
        self.forced: ForcedRouting | None = None

    def hard_decision(self, on: Tensor, rank: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Apply forcing, record (with the real tokens of each example, ``tokens`` (B, T)
        bool), return (on (B,) bool, rank (B,) long)."""
        if self.forced is not None:
            on, rank = self.forced.decide(on.shape[0], self.full_rank, on.device)
        if self.recording:
            self.decisions.append(HardDecisions(on.detach().cpu(), rank.detach().cpu(), tokens.sum(1).cpu()))
        return on, rank

    @abc.abstractmethod
    def run_router(self, tokens: int) -> None:
        """Run what inference computes for every example, on one example of ``tokens`` tokens."""

    @abc.abstractmethod
    def run_adapters(self, rank: int, tokens: int) -> None:
        """Run what an "on at ``rank``" decision adds, on one example of ``tokens`` tokens."""


def zero_example(like: Tensor, tokens: int, width: int) -> Tensor:
    """A (1, tokens, width) zero input on ``like``'s device and dtype: FLOPs do not depend on values."""
    return torch.zeros(1, tokens, width, device=like.device, dtype=like.dtype)


def routed_units(model: nn.Module) -> Iterator[RoutedUnit]:
    for module in model.modules():
        if isinstance(module, RoutedUnit):
            yield module


def force_routing(model: nn.Module, activity: float | None, rank: int | None = None, seed: int = 0) -> None:
    """Force every unit's inference decisions (``activity=None`` restores routing);
    ``rank=0`` draws a random rank per example."""
    for index, unit in enumerate(routed_units(model)):
        unit.forced = None if activity is None else ForcedRouting(activity, rank, seed + 7919 * index)


# -- gather -> compute -> index_add -----------------------------------------------------------
def add_routed(
    out: Tensor,
    x: Tensor,
    tokens: Tensor,
    on: Tensor,
    rank: Tensor,
    compute: Callable[[Tensor, int, Tensor], Tensor],
) -> Tensor:
    """``out`` (B, T, d_out) += the adapter on the real tokens of the active examples.

    ``compute(rows, k, example_of_row)`` returns the update of the gathered rows
    (n, d_in) -> (n, d_out) using the first ``k`` rank columns. Examples are bucketed
    by k, so every bucket is one sliced matmul; nothing is computed for gated-off
    examples or padding (``tokens`` (B, T) bool).
    """
    batch, length = x.shape[:2]
    flat_x = x.reshape(batch * length, x.shape[-1])
    flat_out = out.reshape(batch * length, out.shape[-1])
    keep = tokens & on[:, None]
    for k in torch.unique(rank[on]).tolist():
        index = (keep & (rank == k)[:, None]).reshape(-1).nonzero().squeeze(1)
        if index.numel() == 0:
            continue
        delta = compute(flat_x.index_select(0, index), int(k), torch.div(index, length, rounding_mode="floor"))
        flat_out.index_add_(0, index, delta.to(flat_out.dtype))
    return flat_out.view_as(out)
