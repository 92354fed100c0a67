"""Per-example statistics of routed adapters, from the hard inference decisions.

METHODS.md section 8.3: per example b, the active adapters A_b = sum_m g_bm and the
total rank R_b = sum_m g_bm k_bm, reported as mean, std and histogram over the
evaluation set, plus the active blocks. ``routed_budget`` is the cost-weighted
fraction of the full-rank adapter work actually run,
sum_m g k c_m / sum_m r_max c_m with c_m = 2 (d_in + d_out): the analytic twin of
the measured ``flops_ratio`` without the router.

``adapter_flops_per_token`` is counted over every evaluated example
(``routed_adapter_flops``): a routed adapter's cost depends on the input, so a fixed
probe of a few examples would judge a budget claim on a sample, shared by every seed.
Per unit and example b, with the FlopCounterMode counts of the unit's paths on one
example of T tokens (``methods.flop_count.token_affine_flops``),

    flops_b = router(T_b) + g_b * adapters(k_b, T_b),

summed over units and examples and divided by the summed real tokens. That is exactly
what FlopCounterMode counts when the adapted model runs the examples one at a time
without padding, minus the base model (the trainer's definition; tested).

The heatmap shows, per layer (block) and module, the fraction of examples for which
the adapter ran and its mean rank when it ran.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from methods.flop_count import token_affine_flops

if TYPE_CHECKING:
    from collections.abc import Sequence

    from methods._routing import RoutedUnit
    from methods.base import FlopFormulas

EXAMPLE_METRICS = {
    "active_layers": "mean over evaluated examples of the adapted modules that ran (hard decisions)",
    "active_layers_std": "std over examples of active_layers",
    "total_rank": "mean over examples of the sum of ranks of the modules that ran",
    "total_rank_std": "std over examples of total_rank",
    "active_fraction": "mean over examples of the fraction of adapted modules that ran",
    "active_blocks": "mean over examples of transformer blocks with at least one module that ran",
    "active_blocks_std": "std over examples of active_blocks",
    "block_rank": "mean over examples of the sum over blocks of the largest rank that ran in the block",
    "routed_budget": "mean over examples of sum g*k*c / sum r_max*c: the adapter work run (router excluded)",
    "adapter_flops_per_token": "adapter and router FLOPs per non-pad token over every example of the final "
    "evaluation (validation in search, test in confirmation): hard decisions x per-path FlopCounterMode counts",
    "flops_examples": "examples adapter_flops_per_token and flops_ratio were counted over (the whole final split)",
}


@dataclass(frozen=True)
class SplitFlops:
    """Adapter FLOPs (routers included) over the recorded examples, run one at a time, unpadded."""

    adapter_flops: int
    tokens: int
    examples: int

    @property
    def per_token(self) -> float:
        return self.adapter_flops / max(1, self.tokens)


@dataclass
class RoutingSummary:
    metrics: dict[str, float]
    histograms: dict[str, dict[int, int]]
    #: (block, module) -> (fraction of examples active, mean rank when active)
    cells: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    examples: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "metrics": self.metrics,
            "histograms": {k: {str(v): c for v, c in sorted(h.items())} for k, h in self.histograms.items()},
            "modules": [
                {"block": b, "module": m, "fraction_active": f, "mean_rank_when_active": r}
                for (b, m), (f, r) in self.cells.items()
            ],
        }


def start_recording(units: Sequence[RoutedUnit]) -> None:
    for unit in units:
        unit.recording = True
        unit.decisions = []


def summarize(units: Sequence[RoutedUnit], flop_formulas: FlopFormulas | None = None) -> RoutingSummary | None:
    """Stop recording and summarise; None when nothing was recorded. ``flop_formulas``:
    the method's (``Method.flop_formulas``), for ops of its paths FlopCounterMode does not know."""
    for unit in units:
        unit.recording = False
    recorded = [(u, u.decisions) for u in units if u.decisions]
    if not recorded:
        return None
    n = min(sum(d.on.numel() for d in decisions) for _, decisions in recorded)
    active = torch.zeros(n)
    ranks = torch.zeros(n)
    work = torch.zeros(n)
    full_work, total_modules = 0.0, 0
    per_block: dict[str, torch.Tensor] = {}
    block_rank: dict[str, torch.Tensor] = {}
    cells: dict[tuple[str, str], tuple[float, float]] = {}
    for unit, decisions in recorded:
        on = torch.cat([d[0] for d in decisions])[:n].float()
        rank = torch.cat([d[1] for d in decisions])[:n].float() * on
        active += on * len(unit.gated_modules)
        total_modules += len(unit.gated_modules)
        ranks += rank * len(unit.gated_modules)
        cost = float(sum(c for _, c in unit.gated_modules))
        work += rank * cost
        full_work += unit.full_rank * cost
        per_block[unit.block] = torch.maximum(per_block.get(unit.block, torch.zeros(n)), on)
        block_rank[unit.block] = torch.maximum(block_rank.get(unit.block, torch.zeros(n)), rank)
        fraction = float(on.mean())
        mean_rank = float(rank.sum() / on.sum()) if on.sum() > 0 else 0.0
        for module, _ in unit.gated_modules:
            cells[(unit.block, module)] = (fraction, mean_rank)
    blocks = torch.stack(list(per_block.values())).sum(0)
    metrics = {
        "active_layers": float(active.mean()),
        "active_layers_std": float(active.std(unbiased=False)),
        "total_rank": float(ranks.mean()),
        "total_rank_std": float(ranks.std(unbiased=False)),
        "active_fraction": float(active.mean()) / max(1, total_modules),
        "active_blocks": float(blocks.mean()),
        "active_blocks_std": float(blocks.std(unbiased=False)),
        "block_rank": float(torch.stack(list(block_rank.values())).sum(0).mean()),
        "routed_budget": float(work.mean() / max(full_work, 1e-12)),
    }
    flops = routed_adapter_flops([u for u, _ in recorded], flop_formulas)
    metrics["adapter_flops_per_token"] = flops.per_token
    metrics["flops_examples"] = float(flops.examples)
    histograms = {
        "active_layers": _histogram(active),
        "total_rank": _histogram(ranks),
        "active_blocks": _histogram(blocks),
    }
    return RoutingSummary(metrics, histograms, cells, n)


def routed_adapter_flops(units: Sequence[RoutedUnit], flop_formulas: FlopFormulas | None = None) -> SplitFlops:
    """Sum over units and recorded examples of router(T_b) + g_b adapters(k_b, T_b),
    each path counted once per unit (and rank) by FlopCounterMode."""

    total, seen = 0, None
    for unit in units:
        on = torch.cat([d.on for d in unit.decisions]).bool()
        rank = torch.cat([d.rank for d in unit.decisions])
        tokens = torch.cat([d.tokens for d in unit.decisions]).long()
        if seen is None:
            seen = tokens
        elif not torch.equal(seen, tokens):
            raise ValueError(
                f"routing unit of {unit.block!r} saw other examples than the first unit: FLOPs would not add up"
            )
        longest = int(tokens.max())
        total += token_affine_flops(unit.run_router, check_at=longest, formulas=flop_formulas).total(tokens)
        for k in torch.unique(rank[on]).tolist():
            path = token_affine_flops(partial(unit.run_adapters, int(k)), check_at=longest, formulas=flop_formulas)
            total += path.total(tokens[on & (rank == k)])
    if seen is None:
        return SplitFlops(0, 0, 0)
    return SplitFlops(total, int(seen.sum()), int(seen.numel()))


def _histogram(values: torch.Tensor) -> dict[int, int]:
    uniq, counts = torch.unique(values.round().long(), return_counts=True)
    return {int(v): int(c) for v, c in zip(uniq.tolist(), counts.tolist(), strict=True)}


def _block_key(block: str) -> tuple[str, int]:
    match = re.search(r"^(.*?)(\d+)$", block)
    return (match[1], int(match[2])) if match else (block, -1)


def write_heatmap(
    path: Path,
    cells: dict[tuple[str, str], tuple[float, float]],
    titles: tuple[str, str] = ("fraction of examples active", "mean rank when active"),
    suptitle: str = "",
) -> Path:
    """Two layer x module panels from ``cells`` ((block, module) -> (value1, value2))."""
    import numpy as np

    from methods._figures import pyplot, save_figure

    plt = pyplot()

    blocks = sorted({b for b, _ in cells}, key=_block_key)
    modules = list(dict.fromkeys(m for _, m in cells))
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.4 * len(modules), 1.5 + 0.35 * len(blocks)), squeeze=False)
    for panel, (ax, title) in enumerate(zip(axes[0], titles, strict=True)):
        grid = np.full((len(blocks), len(modules)), np.nan)
        for (block, module), values in cells.items():
            grid[blocks.index(block), modules.index(module)] = values[panel]
        image = ax.imshow(grid, aspect="auto", cmap="viridis")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(modules)), modules, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(
            range(len(blocks)),
            [b.rsplit(".", 2)[-2] + "." + b.rsplit(".", 1)[-1] if "." in b else b for b in blocks],
            fontsize=7,
        )
        for i in range(len(blocks)):
            for j in range(len(modules)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6, color="w")
        fig.colorbar(image, ax=ax, fraction=0.046)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return save_figure(fig, path, dpi=110)


def write_summary(folder: Path, summary: RoutingSummary | None, method: str) -> list[Path]:
    """``routing_stats.json`` (metrics, histograms, per-module activity) and
    ``routing_heatmap.png`` from the last evaluation pass."""
    if summary is None:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    stats_path = folder / "routing_stats.json"
    stats_path.write_text(json.dumps(summary.to_json(), indent=1))
    heatmap = write_heatmap(
        folder / "routing_heatmap.png",
        summary.cells,
        suptitle=f"{method}: {summary.examples} examples, hard inference decisions",
    )
    return [stats_path, heatmap]
