"""Which arithmetic a trial trains and evaluates in: fp32, or bf16/fp16 autocast.

``training.precision`` is ``auto`` (the default), ``fp32``, ``bf16`` or ``fp16``:

- ``auto`` takes bf16 autocast where the trial's device runs bf16 natively — a CPU
  with AVX512-BF16 or AMX, a CUDA device with bf16 (Ampere and later) — and fp32
  everywhere else.
- ``bf16`` forces bf16 autocast. On a CPU without native bf16 it still runs (correct,
  but emulated and slow) and the run records ``precision_native = 0``; the CLI warns
  before a local run starts. Never a silent fallback to fp32.
- ``fp16`` is for GPUs only (with a ``GradScaler``: fp16's range underflows small
  gradients); the spec check refuses it for trials without a GPU.

Why ``auto`` looks at the hardware instead of trusting autocast: measured on two CPUs
(2026-11-29), LoRA r=8 on MiniLM-L6, batch 32, one thread, forward + backward + AdamW:

====================================  ==========  ==========================
CPU                                   fp32        bf16 autocast
====================================  ==========  ==========================
AMD EPYC with avx512_bf16 (issue 15)  15.4 ms/ex  4.4-5.2 ms/ex  (~3x faster)
AMD EPYC Zen 3 (AVX2, no bf16)        18.2 ms/ex  448 ms/ex     (25x slower)
====================================  ==========  ==========================

On the second one a 1024x1024 bf16 ``F.linear`` (the path models take) ran at 21
GFLOP/s against ~180 in fp32 (2 threads; ``torch.mm`` in bf16: 1.0): bf16 there is
emulated. ``torch.backends.mkldnn``'s own check is not enough either
(it accepts AVX512 without BF16, where oneDNN emulates bf16 too), hence the CPU-flag
test below. Autocast itself, the GradScaler and the device checks are torch's; only
the choice is written here.

What autocast changes: matmuls (the model's and the adapters') run in the low
precision; parameters, gradients and optimizer state stay fp32, so methods' hooks
(AdaLoRA's allocation, ASA, proximal gate steps) see fp32 tensors. FLOPs are counted
outside autocast (the count does not depend on the dtype), and SVD-based
initialisations run in ``Method.build``, outside autocast, in fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

    from orchestrator.spec.models import Hypothesis

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class PrecisionChoice:
    """What a trial runs in, and why (recorded on every trial's MLflow run)."""

    requested: str  # as written in the spec: auto | fp32 | bf16 | fp16
    used: str  # fp32 | bf16 | fp16
    native: bool  # the device runs ``used`` in hardware (always true for fp32)
    device: str  # cpu | cuda

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.used)

    def as_params(self) -> dict[str, str]:
        return {
            "precision": self.used,
            "precision_requested": self.requested,
            "precision_native": str(self.native).lower(),
        }


class PrecisionUnavailableError(ValueError):
    """A forced precision the trial's device cannot run at all (fp16 on a CPU)."""


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX tiles: the x86 features that run bf16 matmuls in hardware.
    ``torch.cpu``'s probes are private and may move; without them, no native bf16."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def cuda_has_bf16() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_precision(requested: str, device: str) -> PrecisionChoice:
    """The precision a trial on ``device`` ("cpu" or "cuda") runs for the spec's
    ``requested`` value. Raises PrecisionUnavailableError for fp16 on a CPU."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; one of {', '.join(PRECISIONS)}")
    native_bf16 = cuda_has_bf16() if device == "cuda" else cpu_has_native_bf16()
    if requested == "auto":
        used = "bf16" if native_bf16 else "fp32"
        return PrecisionChoice(requested, used, True, device)
    if requested == "fp16" and device != "cuda":
        raise PrecisionUnavailableError(
            "training.precision fp16 needs a GPU (CPU autocast in fp16 is neither fast nor "
            "range-safe); use auto, bf16 or fp32"
        )
    native = {"fp32": True, "bf16": native_bf16, "fp16": device == "cuda"}[requested]
    return PrecisionChoice(requested, requested, native, device)


def emulated_bf16_warnings(hypothesis: Hypothesis) -> list[str]:
    """Forced bf16 for CPU trials on a CPU that emulates it: allowed (results are
    correct), but much slower than fp32, so the CLI says so before a local run starts.
    (On a cluster the trials' CPUs are not this one: the CLI does not ask there.)"""
    if hypothesis.search.resources_per_trial.gpu > 0:
        return []
    forced = {"training.precision": hypothesis.training.precision}
    forced |= {
        f"arms.{name}.fixed.precision": arm.fixed["precision"]
        for name, arm in hypothesis.arms.items()
        if "precision" in arm.fixed
    }
    where = [field for field, value in forced.items() if value == "bf16"]
    if not where or cpu_has_native_bf16():
        return []
    return [
        f"{', '.join(where)}: bf16 is forced, but this CPU has no native bf16 (AVX512-BF16 or AMX); autocast will "
        "emulate it, measured 25x slower than fp32 on such a CPU. Results stay correct and are marked "
        "precision_native=false; 'auto' would choose fp32 here."
    ]


def autocast(choice: PrecisionChoice) -> contextlib.AbstractContextManager[object]:
    """torch.autocast for the forward pass and loss; a no-op for fp32."""
    import torch

    dtype = choice.autocast_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(choice.device, dtype=dtype)


def grad_scaler(choice: PrecisionChoice) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling (small gradients underflow); bf16 has fp32's range."""
    import torch

    if choice.used != "fp16":
        return None
    return torch.amp.GradScaler(choice.device)
