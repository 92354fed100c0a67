"""A LoRA linear layer with pre-allocated factors and an active rank prefix.

Shared by the hand-written rank-adaptive methods (``plateau_lora``, ``dylora``,
``sora``); they put it into the model with ``methods._injection``. peft ships none of them
(METHODS.md section 7), and peft's ``LoraLayer`` cannot change its rank in place.

One layer holds ``A in R^{r_max x d_in}`` and ``B in R^{d_out x r_max}`` from the start
and runs only the first ``rank`` of them::

    y = W0 x + s * B[:, :rank] (g[:rank] * (A[:rank] x))        (g: optional SoRA gate)

Slicing rather than multiplying by a 0/1 mask matters twice: the rows past ``rank``
get an exactly zero gradient (autograd of a slice), and the work really shrinks, so
FlopCounterMode reports 2 * rank * (d_in + d_out) per token and nothing for the
reserved rows (DESIGN.md: savings must be real skips).

The scaling ``s`` is chosen by ``scale_by``: ``"r_max"`` (alpha / r_max) and
``"sqrt_r_max"`` (alpha / sqrt(r_max)) stay fixed while the rank changes, which is
what growth needs (METHODS.md section 3); ``"rank"`` (alpha / rank) is DyLoRA's.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from methods._injection import inject_adapters

if TYPE_CHECKING:
    from methods.base import BuildContext

ScaleBy = Literal["r_max", "sqrt_r_max", "rank"]


def kaiming_rows_(rows: torch.Tensor, fan_in: int, generator: torch.Generator | None = None) -> None:
    """In place: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), i.e. ``kaiming_uniform_(a=sqrt(5))``
    (peft's and loralib's init of A) for a block of rows of a larger matrix, whose
    fan-in is the full matrix's rather than the block's."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        noise = torch.rand(rows.shape, generator=generator, dtype=torch.float32, device="cpu")
        rows.copy_((noise * 2 - 1).mul_(bound).to(rows.device, rows.dtype))


class MaskedLoraLinear(nn.Module):
    """``base_layer`` plus a LoRA branch of pre-allocated width ``r_max``, active prefix ``rank``.

    Example::

        layer = MaskedLoraLinear(nn.Linear(16, 16), r_max=8, rank=2, init_rows=2)
        layer.grow(4)           # rows 2..3 of A drawn afresh, columns 2..3 of B zero
        assert layer.rank == 4

    Args:
        base: the frozen linear layer (kept as ``base_layer``, the attribute name peft
            uses, so ``methods.base.linear_shapes`` looks through it).
        r_max: rows of A / columns of B allocated.
        rank: active prefix while training (default ``r_max``).
        lora_alpha: scaling numerator.
        scale_by: what alpha is divided by (see the module docstring).
        dropout: dropout on the adapter input.
        gate: add a trainable gate vector ``g`` of length ``r_max`` (SoRA).
        gate_init: ``"randn"`` (SoRA's released code) or ``"ones"``.
        init_rows: rows of A drawn at construction (Kaiming uniform); the rest stay 0
            until ``grow`` activates them. B starts at 0 everywhere, so the layer's
            output equals the base layer's at construction.
        generator: CPU generator for reproducible initialisation.
    """

    def __init__(
        self,
        base: nn.Linear,
        r_max: int,
        *,
        rank: int | None = None,
        lora_alpha: float = 16.0,
        scale_by: ScaleBy = "r_max",
        dropout: float = 0.0,
        gate: bool = False,
        gate_init: Literal["randn", "ones"] = "randn",
        init_rows: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if r_max < 1:
            raise ValueError(f"r_max must be >= 1, got {r_max}")
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r_max = r_max
        self.rank = r_max if rank is None else rank
        self._check_rank(self.rank)
        #: rank used in eval mode; None means the training ``rank`` (DyLoRA sets it)
        self.eval_rank: int | None = None
        #: rows below this index are detached while training (DyLoRA's frozen mode)
        self.frozen_prefix = 0
        self.lora_alpha = lora_alpha
        self.scale_by: ScaleBy = scale_by
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.zeros(r_max, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r_max, device=device, dtype=dtype))
        kaiming_rows_(self.lora_A[: r_max if init_rows is None else init_rows], self.in_features, generator)
        self.lora_gate: nn.Parameter | None = None
        if gate:
            if gate_init == "randn":
                values = torch.randn(r_max, generator=generator).to(device=device, dtype=dtype)
            else:
                values = torch.ones(r_max, device=device, dtype=dtype)
            self.lora_gate = nn.Parameter(values)

    # -- rank bookkeeping ------------------------------------------------------------
    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank <= self.r_max:
            raise ValueError(f"rank must be in [0, {self.r_max}], got {rank}")

    @property
    def active_rank(self) -> int:
        """Rank this forward pass uses: ``eval_rank`` in eval mode when set, else ``rank``."""
        if not self.training and self.eval_rank is not None:
            return self.eval_rank
        return self.rank

    def scaling_for(self, rank: int) -> float:
        if self.scale_by == "r_max":
            return self.lora_alpha / max(1, self.r_max)
        if self.scale_by == "sqrt_r_max":
            return self.lora_alpha / math.sqrt(max(1, self.r_max))
        return self.lora_alpha / max(1, rank)

    @property
    def scaling(self) -> float:
        return self.scaling_for(self.active_rank)

    def active_params(self, rank: int | None = None) -> int:
        """Adapter parameters a rank-``rank`` slice holds (gate entries included)."""
        r = self.rank if rank is None else rank
        return r * (self.in_features + self.out_features + (1 if self.lora_gate is not None else 0))

    # -- forward -------------------------------------------------------------------
    def _factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.lora_A[:rank], self.lora_B[:, :rank]
        cut = min(self.frozen_prefix, rank)
        if self.training and cut > 0:
            a = torch.cat([a[:cut].detach(), a[cut:]], dim=0)
            b = torch.cat([b[:, :cut].detach(), b[:, cut:]], dim=1)
        return a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        rank = self.active_rank
        if rank == 0:
            return out
        a, b = self._factors(rank)
        hidden = F.linear(self.dropout(x), a)
        scale = self.scaling_for(rank)
        if self.lora_gate is not None:
            hidden = hidden * (self.lora_gate[:rank] * scale)
        else:
            hidden = hidden * scale
        return out + F.linear(hidden, b)

    # -- structural changes ------------------------------------------------------------
    def grow(self, new_rank: int, generator: torch.Generator | None = None) -> None:
        """Activate rows ``rank..new_rank``: A rows drawn afresh (Kaiming), B columns
        set to 0, so the layer computes exactly the same function after the call."""
        self._check_rank(new_rank)
        if new_rank <= self.rank:
            return
        with torch.no_grad():
            kaiming_rows_(self.lora_A[self.rank : new_rank], self.in_features, generator)
            self.lora_B[:, self.rank : new_rank] = 0
        self.rank = new_rank

    def delta_weight(self, rank: int | None = None) -> torch.Tensor:
        """The dense update s * B diag(g) A (d_out x d_in) of the first ``rank`` ranks."""
        r = self.active_rank if rank is None else rank
        a, b = self.lora_A[:r], self.lora_B[:, :r]
        scale = self.scaling_for(r)
        if self.lora_gate is not None:
            b = b * self.lora_gate[:r]
        return (b @ a) * scale

    def keep_ranks(self, keep: torch.Tensor) -> None:
        """Drop the ranks where ``keep`` is False (parameters removed, not zeroed) and
        fold the gate into B (SoRA's finalisation). Outputs are unchanged. Only for
        ``scale_by`` fixed scalings: alpha/rank would change with the new width."""
        if self.scale_by == "rank":
            raise ValueError("keep_ranks needs a fixed scaling (scale_by r_max or sqrt_r_max)")
        keep = keep.to(device=self.lora_A.device, dtype=torch.bool)
        scale = self.scaling_for(self.rank)
        with torch.no_grad():
            b = self.lora_B[:, keep]
            if self.lora_gate is not None:
                b = b * self.lora_gate[keep]
            a = self.lora_A[keep].clone()
            # Keep s * B A unchanged under the new, fixed scaling with the smaller width.
            n = int(keep.sum())
            self.r_max = self.rank = n
            self.eval_rank = None
            new_scale = self.scaling_for(n) if n else 1.0
            b = b * (scale / new_scale)
        self.lora_A = nn.Parameter(a, requires_grad=self.lora_A.requires_grad)
        self.lora_B = nn.Parameter(b.contiguous(), requires_grad=self.lora_B.requires_grad)
        self.lora_gate = None

    def merged(self) -> nn.Linear:
        """The base layer with the active update added to its weight (0 extra FLOPs)."""
        with torch.no_grad():
            if self.active_rank:
                self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
        return self.base_layer

    def extra_repr(self) -> str:
        gate = ", gate" if self.lora_gate is not None else ""
        return f"r_max={self.r_max}, rank={self.rank}, scale_by={self.scale_by}{gate}"


def seeded_generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


class MaskedLoraHyperparameters(Protocol):
    """The config fields every method built on ``MaskedLoraLinear`` has (read-only:
    the configs are frozen)."""

    @property
    def r_max(self) -> int: ...
    @property
    def lora_alpha(self) -> float: ...
    @property
    def lora_dropout(self) -> float: ...
    @property
    def target_modules(self) -> list[str] | None: ...


def inject_masked_lora(
    model: nn.Module,
    ctx: BuildContext,
    config: MaskedLoraHyperparameters,
    generator: torch.Generator,
    **layer_options: Any,
) -> dict[str, MaskedLoraLinear]:
    """The ``build`` of dylora, plateau_lora and sora: a ``MaskedLoraLinear`` of
    ``config.r_max`` rows on every target layer, base frozen, head trained.
    ``layer_options`` (``scale_by``, ``gate``, an initial ``rank``...) are where they differ."""
    return inject_adapters(
        model,
        ctx,
        config.target_modules,
        lambda linear: MaskedLoraLinear(
            linear,
            config.r_max,
            lora_alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            generator=generator,
            **layer_options,
        ),
    )
