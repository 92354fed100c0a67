"""One evaluation pass of a classifier, shared by the classification types: logits per
example, cross-entropy in fp32, argmax, put back in split order.

Sequence and image classification differ only in the batches they feed it (and the
order they batch in); a causal-LM type scores by generation and does not use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from orchestrator.tasks.types.base import SplitOutcome
from orchestrator.trial.precision import autocast

if TYPE_CHECKING:
    import torch
    from torch import nn

    from orchestrator.trial.precision import PrecisionChoice


def to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()} if device != "cpu" else batch


def on_device(
    batches: Iterable[dict[str, torch.Tensor]], device: str, limit: int | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    for index, batch in enumerate(batches):
        if limit is not None and index >= limit:
            return
        yield to_device(batch, device)


def evaluate_classifier(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    order: np.ndarray,
    device: str,
    precision: PrecisionChoice | None = None,
) -> SplitOutcome:
    """Every batch (examples of the split in ``order``), in eval mode, under the trial's
    autocast (the loss itself is taken in fp32); given back in split order."""
    import torch

    model.eval()
    predictions, labels, losses = [], [], []
    with torch.no_grad():
        for batch in on_device(batches, device):
            with autocast(precision) if precision is not None else contextlib.nullcontext():
                out = model(**batch)
            losses.append(
                torch.nn.functional.cross_entropy(out.logits.float(), batch["labels"], reduction="none").cpu().numpy()
            )
            predictions.append(out.logits.argmax(-1).cpu().numpy())
            labels.append(batch["labels"].cpu().numpy())
    model.train()
    positions = order[: sum(len(part) for part in predictions)]
    return SplitOutcome(
        predictions=in_split_order(predictions, positions, np.int64),
        gold=in_split_order(labels, positions, np.int64),
        losses=in_split_order(losses, positions, np.float64),
    )


def in_split_order(parts: list[np.ndarray], positions: np.ndarray, dtype: type) -> np.ndarray:
    """Per-batch arrays, joined and put back at their examples' places in the split."""
    values: np.ndarray = np.concatenate(parts).astype(dtype) if parts else np.array([], dtype=dtype)
    ordered = np.empty_like(values)
    ordered[positions] = values
    return ordered
