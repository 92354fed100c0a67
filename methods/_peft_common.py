"""Helpers shared by the methods that wrap a peft tuner (AdaLoRA, AdaMSS, QLoRA, LoRA variants).

Three jobs, all measurement, none of them training math:

- memory: bytes held by the base model's weights (4-bit weights *and* their
  quantisation statistics) and by the adapter, read from the live model;
- trainable-parameter tracking over training (peak, final, step-weighted mean) for
  methods whose trainable set changes while they train (AdaMSS + ASA);
- a layer x module heatmap (AdaLoRA's kept ranks, AdaMSS's active subspaces).

Which tensor belongs where is decided by name, the way peft names things: adapter
tensors carry the tuner's prefix (``lora_``, ``adamss_``) or AdaLoRA's ``ranknum``;
the trained copy of the task head lives under ``modules_to_save`` (counted by the
engine as ``head_params``, so neither here nor there); everything else is the base.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner
    from torch import nn

LayerT = TypeVar("LayerT")  # a peft layer class; peft's are mixins, not nn.Module subclasses

MB = 1024 * 1024

#: Names of the memory metrics every peft-wrapping method reports.
MEMORY_METRICS = {
    "base_memory_mb": "MiB held by the base model's weights and buffers as loaded (4-bit weights plus their "
    "quantisation statistics for QLoRA; the frozen original head included, adapters excluded)",
    "adapter_memory_mb": "MiB held by the adapter's parameters and buffers (e.g. AdaMSS's frozen V^T projections); "
    "the trained head copy is excluded (reported as head_params)",
}


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _quant_state_tensors(quant_state) -> Iterator[torch.Tensor]:
    """Tensors a bitsandbytes ``QuantState`` holds besides the packed weight: absmax,
    the code book, the double-quantisation offset and the nested state's own absmax/code."""
    import torch

    for attr in ("absmax", "code", "offset"):
        value = getattr(quant_state, attr, None)
        if isinstance(value, torch.Tensor):
            yield value
    nested = getattr(quant_state, "state2", None)
    if nested is not None:
        yield from _quant_state_tensors(nested)


def adapter_markers(model: nn.Module) -> tuple[str, ...]:
    """Name fragments that mark adapter tensors in a peft model."""
    prefix = getattr(getattr(model, "base_model", None), "prefix", None) or "lora_"
    return (prefix, "ranknum")


def _role(name: str, markers: tuple[str, ...]) -> str:
    if "modules_to_save" in name:
        return "head"
    parts = name.split(".")
    if any(part.startswith(marker) for part in parts for marker in markers):
        return "adapter"
    return "base"


def memory_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of ``base``, ``adapter`` and ``head`` tensors (parameters and buffers).

    Shared storage is counted once. A 4-bit ``Params4bit`` counts its packed uint8 data
    plus its quantisation statistics (absmax, nested absmax, code books), which is what
    the weights really cost, not the 0.5 byte/parameter of the headline.
    """
    markers = adapter_markers(model)
    totals = {"base": 0, "adapter": 0, "head": 0}
    seen: set[int] = set()
    tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for name, tensor in tensors:
        key = tensor.data_ptr() if tensor.numel() else id(tensor)
        if key in seen:
            continue
        seen.add(key)
        role = _role(name, markers)
        totals[role] += _tensor_bytes(tensor)
        quant_state = getattr(tensor, "quant_state", None)
        if quant_state is not None:
            for extra in _quant_state_tensors(quant_state):
                if extra.data_ptr() not in seen:
                    seen.add(extra.data_ptr())
                    totals[role] += _tensor_bytes(extra)
    return totals


def memory_stats(model: nn.Module) -> dict[str, float]:
    """``base_memory_mb`` and ``adapter_memory_mb`` of a peft model (see MEMORY_METRICS)."""
    totals = memory_bytes(model)
    return {"base_memory_mb": totals["base"] / MB, "adapter_memory_mb": totals["adapter"] / MB}


def trainable_adapter_params(model: nn.Module) -> int:
    """Adapter parameters that currently require a gradient (the trained head excluded)."""
    markers = adapter_markers(model)
    return sum(
        param.numel()
        for name, param in model.named_parameters()
        if param.requires_grad and _role(name, markers) == "adapter"
    )


@dataclass
class TrainableTracker:
    """Trainable adapter parameters over training.

    ``record(count)`` is called once per optimizer step with the number of parameters
    the optimizer updated *in that step* (read before the method changes the trainable
    set for the next step). ``final`` is the count in force when training ends.
    """

    counts: list[int] = field(default_factory=list)
    final: int | None = None

    def record(self, count: int) -> None:
        self.counts.append(count)

    def summary(self, current: int) -> dict[str, float]:
        """``trainable_params_peak``, ``trainable_params_final`` and the step-weighted
        ``trainable_params_mean``; with no step recorded, all three are ``current``."""
        counts = self.counts or [current]
        final = self.final if self.final is not None else current
        return {
            "trainable_params_peak": float(max(max(counts), final)),
            "trainable_params_final": float(final),
            "trainable_params_mean": float(sum(counts) / len(counts)),
        }


def as_peft_model(model: nn.Module) -> PeftModel:
    """``model`` as the PeftModel that a peft-wrapping method's ``build`` returned: the
    hooks receive it typed as ``nn.Module``. A cast, not a check (no runtime cost)."""
    return cast("PeftModel", model)


def peft_layers(model: nn.Module, kind: type[LayerT], weights: str, adapter: str) -> dict[str, LayerT]:
    """Layers of peft's type ``kind`` that hold ``adapter`` in their ``weights`` dict
    (``lora_E``, ``adamss_A``), by module path inside the transformers model: the keys
    of peft's ``rank_pattern``, and of our heatmaps."""
    tuner = cast("BaseTuner", as_peft_model(model).base_model)
    inner: nn.Module = tuner.model
    return {
        name: module
        for name, module in inner.named_modules()
        if isinstance(module, kind) and adapter in getattr(module, weights)
    }


_LAYER_MODULE = re.compile(r"(?:^|\.)(?P<layer>\d+)\.(?P<module>.+)$")


def layer_module_grid(values: dict[str, float]) -> tuple[list[int], list[str], list[list[float]]]:
    """Arrange per-module values keyed by module path (``...layer.3.attention.self.query``)
    into rows = layer index, columns = module path below the layer. Modules without a
    layer index go into row -1."""
    cells: dict[tuple[int, str], float] = {}
    for name, value in values.items():
        match = _LAYER_MODULE.search(name)
        if match:
            cells[(int(match["layer"]), match["module"])] = value
        else:
            cells[(-1, name)] = value
    layers = sorted({layer for layer, _ in cells})
    modules = sorted({module for _, module in cells})
    grid = [[cells.get((layer, module), float("nan")) for module in modules] for layer in layers]
    return layers, modules, grid


def save_heatmap(values: dict[str, float], path: Path, title: str, colorbar_label: str) -> Path:
    """A layer x module heatmap PNG of ``values`` (Agg backend, no display needed)."""
    import numpy as np

    from methods._figures import pyplot, save_figure

    plt = pyplot()

    layers, modules, grid = layer_module_grid(values)
    data = np.array(grid, dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.8 + 1.3 * len(modules)), max(2.8, 1.6 + 0.45 * len(layers))))
    image = ax.imshow(data, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(modules)), modules, rotation=30, ha="right")
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_xlabel("module")
    ax.set_ylabel("layer")
    middle = np.nanmean(data) if np.isfinite(data).any() else 0.0
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if not np.isnan(data[i, j]):
                color = "k" if data[i, j] > middle else "w"  # viridis is light at the top
                ax.text(j, i, f"{data[i, j]:g}", ha="center", va="center", color=color, fontsize=8)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    ax.set_title(title)
    return save_figure(fig, path)


def steps_from(value_steps: int, fraction: float | None, total_steps: int) -> int:
    """A schedule point given either in optimizer steps or as a fraction of all steps
    (the fraction wins when set)."""
    if fraction is None:
        return int(value_steps)
    return round(fraction * total_steps)
