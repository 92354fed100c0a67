"""A two-block random BERT (hidden 32) and padded batches, for the routed-method tests
(cogalora, radlora): both need the same model, build context and uneven padding."""

from __future__ import annotations

import torch

from methods import get_method
from methods.base import BuildContext
from orchestrator.tasks.models import load_model, resolve_model

REF = resolve_model("random:bert-tiny")  # 2 blocks, hidden 32


def base_model():
    return load_model(REF, num_labels=2, seed=0)


def build_method(name: str, total_steps: int = 20, **params):
    """The method ``name`` configured by ``params``, and the tiny BERT it adapted (query, value)."""
    cls = get_method(name)
    method = cls(cls.Config(**params))
    ctx = BuildContext(
        total_steps=total_steps, steps_per_epoch=total_steps, num_labels=2, target_modules=["query", "value"], seed=0
    )
    return method, method.build(base_model(), ctx)


def make_batch(lengths=(12, 9, 5, 12), seed: int = 0):
    """A batch whose examples have ``lengths`` real tokens, padded to the longest."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    ids = torch.randint(1000, 5000, (len(lengths), width), generator=gen) * mask
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "labels": torch.tensor([0, 1] * (len(lengths) // 2)),
    }
