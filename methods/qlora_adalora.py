"""QLoRA + AdaLoRA: AdaLoRA adapters on a base model stored in 4-bit NF4 (METHODS.md section 4).

The base is re-loaded with bitsandbytes (``load_in_4bit``, NF4, double quantisation,
float32 compute on CPU and bfloat16 on GPU), skipping the task head and the pooler,
then ``prepare_model_for_kbit_training``; peft wraps every ``bnb.nn.Linear4bit`` target
as ``SVDLinear4bit`` and everything else is :class:`methods.adalora.AdaLoRA`
(schedule as fractions of the run's steps, ``update_and_allocate``, regulariser, rank pattern,
resize in ``finalize``).

The engine hands over the float model it loaded; we re-load the same weights quantised
from ``ctx.model_path``, or, for models built in code (``model_path`` is None), from a
temporary ``save_pretrained`` copy. The float head's initial weights are copied into
the quantised model, so every arm starts from the same head for a given seed.

Memory (``base_memory_mb``) counts what the quantised weights really hold: packed uint8
weights plus absmax, nested absmax and code books, plus the float embeddings,
LayerNorms, pooler and head, which are not quantised. It is measured right after
loading; bitsandbytes' one-way repack of the weights for its AVX512-BF16 CPU
inference kernel is switched off (:func:`keep_training_layout`), so the layout, and
the number, stay the same through training and evaluation. Only linear layers shrink (4 bits + statistics per weight),
so the ratio to the float base (``base_memory_compression``) depends on how much of
the model the embeddings are: about 5x on BERT-base-sized models in the seed, much less
on MiniLM, whose word embeddings are half of its weights.

FLOPs: bitsandbytes' 4-bit matmuls are custom ops that FlopCounterMode does not see;
``flop_formulas`` declares them (2 * M * K * N, like a float matmul), so
adapted-minus-base stays the adapter's cost. The per-call dequantisation is elementwise
work and is not counted. No merge into 4-bit layers exists (peft).
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

from pydantic import Field

from methods import register
from methods._peft_common import MB, memory_bytes, memory_stats
from methods.adalora import AdaLoRA, AdaLoraMethodConfig
from methods.base import BuildContext, FlopFormula, FlopFormulas, Requirement

if TYPE_CHECKING:
    from torch import nn
    from transformers import BitsAndBytesConfig, PreTrainedModel


class QloraAdaLoraConfig(AdaLoraMethodConfig):
    """AdaLoRA's hyperparameters plus how the base model is quantised."""

    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the base weights")
    double_quant: bool = Field(True, description="quantise the absmax statistics too (about 0.37 bit/weight saved)")
    compute_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="dtype of the dequantised matmul: auto = float32 on CPU, bfloat16 on GPU"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in backward (less memory, slower; off by default on CPU)"
    )


def _matmul_4bit_flops(a_shape, *_args, out_shape=None, **_kwargs) -> int:
    """2 * M * K * N for a bitsandbytes 4-bit matmul: A is (..., K), the output (..., N)."""
    rows_times_k = 1
    for dim in a_shape:
        rows_times_k *= int(dim)
    return 2 * rows_times_k * int(out_shape[-1])


def bnb_4bit_flop_formulas() -> FlopFormulas:
    """bitsandbytes' gemm_4bit (training) and gemv_4bit (CPU inference) priced like float
    matmuls; none when bitsandbytes is missing (then no model holds its ops)."""
    try:
        import bitsandbytes  # noqa: F401  (registers torch.ops.bitsandbytes)
        import torch
    except ImportError:
        return {}
    formulas: dict[Any, FlopFormula] = {}
    for op_name in ("gemm_4bit", "gemv_4bit"):
        try:
            formulas[getattr(torch.ops.bitsandbytes, op_name)] = _matmul_4bit_flops
        except (AttributeError, RuntimeError):
            continue
    return formulas


def bnb_config(config: QloraAdaLoraConfig, ctx: BuildContext) -> BitsAndBytesConfig:
    """The ``BitsAndBytesConfig`` of METHODS.md section 4 (head and pooler kept in float)."""
    import torch
    from transformers import BitsAndBytesConfig

    if config.compute_dtype == "auto":
        compute_dtype = torch.float32 if str(ctx.device).startswith("cpu") else torch.bfloat16
    else:
        compute_dtype = getattr(torch, config.compute_dtype)
    # transformers 5 matches skip patterns from the start of a module path or as a
    # suffix, so "pooler" alone would not match "bert.pooler.dense"
    skip = list(dict.fromkeys([*ctx.head_modules, "pooler", "pooler.dense"]))
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.quant_type,
        bnb_4bit_use_double_quant=config.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=skip,
    )


def load_quantised(model: nn.Module, ctx: BuildContext, quantization_config: BitsAndBytesConfig) -> nn.Module:
    """The same weights as ``model``, re-loaded in 4 bits, head copied over."""
    from transformers import AutoModelForSequenceClassification

    float_model = cast("PreTrainedModel", model)  # the task's model is a transformers model

    kwargs = {
        "quantization_config": quantization_config,
        "num_labels": float_model.config.num_labels,
        "attn_implementation": getattr(float_model.config, "_attn_implementation", None) or "eager",
        "device_map": {"": ctx.device},
    }
    if ctx.model_path is not None:
        quantised = AutoModelForSequenceClassification.from_pretrained(ctx.model_path, **kwargs)
    else:
        with tempfile.TemporaryDirectory(prefix="qlora-base-") as folder:
            float_model.save_pretrained(folder)
            quantised = AutoModelForSequenceClassification.from_pretrained(folder, **kwargs)
    for head in ctx.head_modules:
        quantised.get_submodule(head).load_state_dict(float_model.get_submodule(head).state_dict())
    return quantised


def quantised_linear_compression(float_model: nn.Module, quantised: nn.Module) -> float:
    """Float bytes over 4-bit bytes (packed weights, statistics, float biases) of the
    layers that bitsandbytes quantised."""
    import bitsandbytes as bnb

    float_bytes = quantised_bytes = 0
    for name, module in quantised.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            float_bytes += memory_bytes(float_model.get_submodule(name))["base"]
            quantised_bytes += memory_bytes(module)["base"]
    return float_bytes / quantised_bytes if quantised_bytes else float("nan")


def keep_training_layout(model: nn.Module) -> int:
    """Stop bitsandbytes (0.50) from repacking 4-bit weights for its AVX512-BF16 CPU
    inference kernel on the first no-grad evaluation. The repack is one-way: training
    after an evaluation (every epoch after the first) then runs the inference-only
    kernel and fails ("a view of a leaf Variable that requires grad is being used in an
    in-place operation"); it also crashes on layers narrower than the quantisation block
    (random:bert-tiny), de-nests the statistics and computes slightly differently from
    training. Costs about 2x in no-grad forward time on CPU. Returns the layers switched."""
    import bitsandbytes as bnb

    switched = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


@register
class QloraAdaLoRA(AdaLoRA):
    name = "qlora_adalora"
    Config = QloraAdaLoraConfig
    config: QloraAdaLoraConfig
    summary = "QLoRA + AdaLoRA (peft + bitsandbytes): AdaLoRA on a 4-bit NF4 base model"
    requires = (Requirement("bitsandbytes", extra="quant"),)
    unsupported_task_types: ClassVar[dict[str, str]] = {
        "image-classification": "it reloads the base model 4-bit as AutoModelForSequenceClassification "
        "(quantised_base); an image model would need its own Auto class there",
        "causal-lm": "it reloads the base model 4-bit as AutoModelForSequenceClassification (quantised_base), "
        "which puts a random score head where the language model's lm_head is",
    }
    metrics: ClassVar[dict[str, str]] = {
        **AdaLoRA.metrics,
        "base_float_memory_mb": "MiB of the float base model this arm was given, before quantisation",
        "base_memory_compression": "base_float_memory_mb / base_memory_mb",
        "quantised_linear_compression": "float bytes / 4-bit bytes (statistics included) of the linear layers that "
        "were quantised: what 4-bit buys where it applies",
    }
    #: AdaLoRA's, and the memory of the quantised base, measured once after loading.
    exact_metrics = AdaLoRA.exact_metrics | {
        "base_float_memory_mb",
        "base_memory_compression",
        "quantised_linear_compression",
    }

    def build(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        from peft import prepare_model_for_kbit_training

        self._float_base_mb = memory_bytes(model)["base"] / MB
        quantised = load_quantised(model, ctx, bnb_config(self.config, ctx))
        self._linear_compression = quantised_linear_compression(model, quantised)
        keep_training_layout(quantised)
        quantised = prepare_model_for_kbit_training(
            quantised, use_gradient_checkpointing=self.config.gradient_checkpointing
        )
        peft_model = super().build(quantised, ctx)
        self._base_mb = memory_stats(peft_model)["base_memory_mb"]
        return peft_model

    def flop_formulas(self) -> FlopFormulas:
        return bnb_4bit_flop_formulas()

    def stats(self, model: nn.Module) -> dict[str, float]:
        stats = super().stats(model)
        stats["base_memory_mb"] = self._base_mb
        stats["base_float_memory_mb"] = self._float_base_mb
        stats["base_memory_compression"] = self._float_base_mb / self._base_mb
        stats["quantised_linear_compression"] = self._linear_compression
        return stats
