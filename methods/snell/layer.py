"""SNELL's math: the kernelised update, its competition-based sparsification, the layer.

Imported by ``methods.snell`` when a model is built (torch is heavy, and the CLI
validates specs without it). ``CDIST_FLOP_FORMULAS`` prices the cdist kernels, which
FlopCounterMode does not count and an unmerged SNELL model computes once per adapted
module and forward call; ``Snell.flop_formulas`` declares them, and the engine counts
every FLOP of a SNELL model with them.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import FlopFormulas


# -- FLOP formulas for the ops FlopCounterMode does not count ---------------------------
def _euclidean_dist_flops(x1_shape: Any, x2_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """``aten._euclidean_dist`` (cdist, p=2, more than 25 rows): one matmul of the inputs
    augmented by two columns (norms and ones): 2 * batch * P * R * (M + 2)."""
    *batch, p_rows, m = x1_shape
    r_rows = x2_shape[-2]
    return 2 * math.prod(batch) * p_rows * r_rows * (m + 2)


def _cdist_forward_flops(x1_shape: Any, x2_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """``aten._cdist_forward`` (direct p-norm): a difference, a power and a sum per
    coordinate and pair: 3 * batch * P * R * M."""
    *batch, p_rows, m = x1_shape
    r_rows = x2_shape[-2]
    return 3 * math.prod(batch) * p_rows * r_rows * m


#: cdist takes the matmul path (``_euclidean_dist``) when either side has more than 25
#: rows, the direct one (``_cdist_forward``) otherwise; both are priced.
CDIST_FLOP_FORMULAS: FlopFormulas = MappingProxyType(
    {
        torch.ops.aten._euclidean_dist: _euclidean_dist_flops,
        torch.ops.aten._cdist_forward: _cdist_forward_flops,
    }
)


# -- the sparsification ------------------------------------------------------------------
def zeroed_count(numel: int, sparsity: float) -> int:
    """How many entries a sparsity ratio zeroes: round(sparsity * numel), within [0, numel]."""
    return min(numel, max(0, round(sparsity * numel)))


def competition_sparsify(delta: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``delta * stopgrad(|delta|) * 1[|delta| > tau]`` with the ``round(sparsity * n)``
    smallest magnitudes zeroed; ``sparsity == 0`` returns ``delta`` untouched.

    tau is the k-th smallest magnitude from ``kthvalue`` (linear time, any size);
    entries tied with tau are zeroed too, which only matters for exact ties.
    """
    if sparsity <= 0:
        return delta
    magnitude = delta.detach().abs()
    k = zeroed_count(magnitude.numel(), sparsity)
    if k == 0:
        return delta * magnitude
    if k == magnitude.numel():
        return delta * 0
    tau = magnitude.flatten().kthvalue(k).values
    return delta * (magnitude * (magnitude > tau))


# -- the layer -------------------------------------------------------------------------
class SnellLinear(nn.Module):
    """``base_layer`` plus the sparsified kernel update: y = W0 x + dW_s x.

    Args:
        base: the frozen linear layer (kept as ``base_layer``).
        low_rank_dim: q; parameters are q * (d_in + d_out) for both kernels.
        sparsity: fraction of dW zeroed on every forward pass.
        kernel: ``"snell"`` (distance kernel) or ``"lora"`` (linear kernel B A).
        num_heads: H, the number of distance kernels summed (q must be divisible by H).
        coeff: |c_h|; the heads alternate in sign.
        dropout: dropout on the adapter input.
        generator: CPU generator for reproducible initialisation.
    """

    head_coeff: torch.Tensor  # a buffer (kernel "snell"): the signed c_h, (H, 1, 1)

    def __init__(
        self,
        base: nn.Linear,
        low_rank_dim: int,
        *,
        sparsity: float = 0.5,
        kernel: Literal["snell", "lora"] = "snell",
        num_heads: int = 2,
        coeff: float = 0.1,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.low_rank_dim, self.sparsity, self.kernel = low_rank_dim, sparsity, kernel
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        factory: dict[str, Any] = {"device": base.weight.device, "dtype": base.weight.dtype}
        d_in, d_out = self.in_features, self.out_features
        if kernel == "snell":
            if low_rank_dim % num_heads:
                raise ValueError(f"low_rank_dim ({low_rank_dim}) must be divisible by num_heads ({num_heads})")
            width = low_rank_dim // num_heads
            self.in_q = nn.Parameter(_kaiming(generator, (num_heads, d_in, width), **factory))
            self.out_q = nn.Parameter(_kaiming(generator, (num_heads, d_out, width), **factory))
            signs = torch.tensor([(-1.0) ** h for h in range(num_heads)], **factory)
            self.register_buffer("head_coeff", (coeff * signs).view(num_heads, 1, 1), persistent=True)
        else:
            self.lora_A = nn.Parameter(_kaiming(generator, (low_rank_dim, d_in), **factory))
            b_init = _kaiming(generator, (d_out, low_rank_dim), **factory)
            self.lora_B = nn.Parameter(b_init if sparsity > 0 else torch.zeros_like(b_init))

    @property
    def _factor_names(self) -> tuple[str, str]:
        return ("in_q", "out_q") if self.kernel == "snell" else ("lora_A", "lora_B")

    def _kernel(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """dW (d_out x d_in) from the two tables: (In_Q, Out_Q) or (A, B)."""
        if self.kernel == "snell":
            distances = torch.cdist(first, second, p=2)  # H x d_in x d_out
            return (self.head_coeff * distances).sum(dim=0).t()
        return second @ first

    def dense_update(self) -> torch.Tensor:
        """dW (d_out x d_in, nn.Linear layout) before sparsification."""
        return self._kernel(*(getattr(self, name) for name in self._factor_names))

    def sparse_update(self) -> torch.Tensor:
        return competition_sparsify(self.dense_update(), self.sparsity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + F.linear(self.dropout(x), self.sparse_update())

    def fold_initial_update(self) -> None:
        """W0 <- W0 - dW_s(0): the adapted layer computes the base function at step 0.

        The step-0 tables are kept (non-persistent buffers, q * (d_in + d_out) values,
        what the adapter itself holds) so that :meth:`weight_change` can recompute the
        folded dW_s(0) instead of storing it dense or keeping a copy of W0.
        """
        with torch.no_grad():
            self.base_layer.weight -= self.sparse_update().to(self.base_layer.weight.dtype)
        for name in self._factor_names:
            self.register_buffer(f"folded_{name}", getattr(self, name).detach().clone(), persistent=False)

    def folded_update(self) -> torch.Tensor:
        """dW_s(0) as subtracted from W0 by :meth:`fold_initial_update`; 0 when nothing was folded."""
        first, second = (getattr(self, f"folded_{name}", None) for name in self._factor_names)
        if first is None or second is None:
            return torch.zeros_like(self.base_layer.weight)
        return competition_sparsify(self._kernel(first, second), self.sparsity)

    def weight_change(self) -> torch.Tensor:
        """How far the adapted layer's effective weight is from the pretrained W0:
        dW_s(T) - dW_s(0) after a fold, dW_s(T) without one. What merging leaves in the
        model, and what a density of the learned update must count: dW_s(T) alone keeps
        1 - sparsity of the entries by construction, while the change also touches
        every entry that was in the step-0 support."""
        return self.sparse_update() - self.folded_update().to(self.base_layer.weight.dtype)

    def merged(self) -> nn.Linear:
        """The base layer with dW_s added to its weight (0 extra FLOPs from now on)."""
        with torch.no_grad():
            self.base_layer.weight += self.sparse_update().to(self.base_layer.weight.dtype)
        return self.base_layer

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, q={self.low_rank_dim}, sparsity={self.sparsity}"


def _kaiming(generator: torch.Generator | None, shape: tuple[int, ...], **factory: Any) -> torch.Tensor:
    """``kaiming_uniform_(a=sqrt(5))`` as torch computes it for ``shape`` (fan_in =
    shape[1] * prod(shape[2:])), drawn from ``generator``."""
    fan_in = shape[1] * math.prod(shape[2:])
    bound = 1.0 / math.sqrt(fan_in)
    noise = torch.rand(shape, generator=generator, dtype=torch.float32)
    return ((noise * 2 - 1) * bound).to(**factory)
