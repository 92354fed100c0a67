"""Full fine-tuning: every weight of the base model is trained (the upper baseline)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from methods import register
from methods.base import BuildContext, Method, MethodConfig

if TYPE_CHECKING:
    from torch import nn


class FullConfig(MethodConfig):
    """Full fine-tuning has no hyperparameters of its own (lr etc. are training's)."""


@register
class Full(Method):
    name = "full"
    Config = FullConfig
    config: FullConfig
    summary = "full fine-tuning of every base-model weight"

    def build(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model
