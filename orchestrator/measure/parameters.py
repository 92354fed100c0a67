"""Parameter counts the judge trusts: adapter parameters trained at once, and the head's.

The head (classifier/pooler, named by ``tasks.models.head_modules``) is counted apart:
every method trains the same head, so counting it would blur the adapters' difference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


def adapter_trainable(model: nn.Module, method: Any, heads: list[str]) -> int:
    """Adapter parameters trained at this step (head excluded): the method's own count
    where it allocates more than it uses (``Method.trainable_adapter_params``)."""
    own = method.trainable_adapter_params(model)
    if own is not None:
        return own
    return sum(p.numel() for name, p in model.named_parameters() if p.requires_grad and not is_head(name, heads))


def head_params(model: nn.Module, heads: list[str]) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if p.requires_grad and is_head(name, heads))


def is_head(name: str, heads: list[str]) -> bool:
    return any(part in heads for part in name.split("."))
