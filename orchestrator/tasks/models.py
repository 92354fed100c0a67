"""Base models of the default task type (sequence classification), by the names they
always had here; the models themselves belong to the task types
(``orchestrator.tasks.types``: ``text_models`` for text, ``image_classification`` for
images), which also own the default target modules and the head per model family.

References for text: ``embedded:minilm-l6``, ``random:bert-tiny`` /
``random:bert-h{H}-l{L}``, a local folder or a hub id (``text_models`` says more).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.tasks.types import DEFAULT_TASK_TYPE, get_task_type
from orchestrator.tasks.types.base import DEFAULT_TARGET_MODULES, ModelRef, ModelUnavailableError
from orchestrator.tasks.types.text_models import (
    EMBEDDED_MODELS,
    is_known_model_ref,
    load_model,
    load_tokenizer,
    resolve_model,
    tokenizer_path,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "EMBEDDED_MODELS",
    "ModelRef",
    "ModelUnavailableError",
    "default_target_modules",
    "head_modules",
    "is_known_model_ref",
    "load_model",
    "load_tokenizer",
    "model_family",
    "resolve_model",
    "tokenizer_path",
]


def model_family(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", "bert")


def default_target_modules(model: nn.Module) -> list[str]:
    return get_task_type(DEFAULT_TASK_TYPE).default_target_modules(model)


def head_modules(model: nn.Module) -> list[str]:
    """See ``orchestrator.tasks.types.base.TaskType.head_modules``."""
    return get_task_type(DEFAULT_TASK_TYPE).head_modules(model)
