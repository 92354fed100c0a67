"""Training throughput of an orchestrate trial vs a plain peft + torch loop, in fp32 and
bf16 autocast, each as a fraction of this CPU's own dense-matmul peak.

Same model (embedded MiniLM-L6), same LoRA (r=8 on query/value, peft), same data
(embedded Rotten Tomatoes, batch 32, max_length 64, dynamic padding, random batches:
``group_by_length: false`` for the trial, as the plain loop batches), same threads; one
run, the loops alternating so machine noise hits every one of them. A third loop, the
trial as it runs by default (length-grouped batches, less padding), shows what
grouping buys. Prints, per
precision: examples/s of each loop, the trial / plain ratio (target >= 0.9), the
achieved GFLOP/s (training FLOPs per example, counted by FlopCounterMode over one
forward + backward, times examples/s), and that as a fraction of the matmul peak
measured in this run (1024 x 1024 matmuls, same threads, same dtype). Then bf16 / fp32
for both loops: what ``training.precision: auto`` buys (or would cost) on this CPU.

    python benchmarks/throughput.py [--examples 640] [--threads 2] [--repeats 2]

The trial's time is its reported ``train_time_s``: the training epochs only (its
per-epoch validation and FLOP counting are measured work the plain loop does not do).

On a CPU without native bf16 (no AVX512-BF16/AMX) autocast emulates bf16 and is many
times slower; the bf16 loops then run on ``--emulated-examples`` (default 64) only, so
the benchmark still finishes in minutes: a rate is a rate.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _autocast(precision: str):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def _lora_model(seed: int):
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    from orchestrator.tasks.models import load_model, resolve_model

    torch.manual_seed(seed)
    model = load_model(resolve_model("embedded:minilm-l6"), 2, seed)
    return get_peft_model(
        model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, target_modules=["query", "value"])
    )


def plain_loop(data, threads: int, precision: str, seed: int = 0) -> float:
    import torch
    from transformers import get_linear_schedule_with_warmup

    torch.set_num_threads(threads)
    model = _lora_model(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-4)
    steps = -(-len(data.splits["train"]) // 32)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
    model.train()
    started = time.perf_counter()
    for batch in data.splits["train"].batches(32, data.pad_id, shuffle_seed=seed):
        with _autocast(precision):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def trial_loop(data, threads: int, precision: str, seed: int = 0, group_by_length: bool = False) -> float:
    from orchestrator.spec.models import TrainingSpec
    from orchestrator.trial.training import TrialSetup, run_trial

    training = TrainingSpec(epochs=1, batch_size=32, lr=5e-4, group_by_length=group_by_length, precision=precision)
    setup = TrialSetup(
        arm="lora",
        method="lora",
        model="embedded:minilm-l6",
        metric="accuracy",
        training=training,
        fixed={"r": 8},
        threads=threads,
    )
    with tempfile.TemporaryDirectory() as tmp:
        final = run_trial(setup, {}, seed, data, lambda m, a: None, Path(tmp))
    return final["train_time_s"]


def training_flops_per_example(data, threads: int) -> float:
    """Forward + backward FLOPs of one training step, per example, averaged over the
    first few random batches (padding included: the hardware computes it)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(threads)
    model = _lora_model(0)
    model.train()
    total, examples = 0, 0
    for index, batch in enumerate(data.splits["train"].batches(32, data.pad_id, shuffle_seed=0)):
        if index == 4:
            break
        with FlopCounterMode(display=False) as counter:
            model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
        total += counter.get_total_flops()
        examples += len(batch["labels"])
    return total / examples


def matmul_peak_gflops(threads: int, precision: str, size: int = 1024, budget_s: float = 3.0) -> float:
    """Best GFLOP/s of ``size``-square matmuls in ``precision`` on ``threads`` threads,
    over ``torch.mm`` and ``F.linear``: they take different kernels where bf16 is
    emulated (measured on an AVX2-only EPYC, 1024^2, 2 threads: mm 1.0 GFLOP/s, linear,
    the path the models take, 21; fp32 ~180 either way), and the peak is the best."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    best = 0.0
    for product in (lambda: a @ b, lambda: F.linear(a, b)):
        product()  # warm-up: oneDNN picks its kernel
        deadline = time.perf_counter() + budget_s / 2
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            product()
            best = max(best, 2 * size**3 / (time.perf_counter() - started) / 1e9)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=640)
    parser.add_argument(
        "--emulated-examples", type=int, default=64, help="examples for bf16 where the CPU emulates it"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from orchestrator.spec.models import TaskSpec
    from orchestrator.tasks.prepare import prepare_task
    from orchestrator.trial.precision import cpu_has_native_bf16

    native = cpu_has_native_bf16()
    cache = Path(tempfile.gettempdir()) / "orchestrate-bench-cache"
    sizes = {"fp32": args.examples, "bf16": args.examples if native else args.emulated_examples}
    data = {
        p: prepare_task(TaskSpec(train_examples=n, val_examples=64, test_examples=64), Path("."), cache)
        for p, n in sizes.items()
    }
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for precision in ("fp32", "bf16"):
            times.setdefault(("plain", precision), []).append(plain_loop(data[precision], args.threads, precision))
            times.setdefault(("trial", precision), []).append(trial_loop(data[precision], args.threads, precision))
        times.setdefault(("grouped", "fp32"), []).append(
            trial_loop(data["fp32"], args.threads, "fp32", group_by_length=True)
        )
    flops = training_flops_per_example(data["fp32"], args.threads)
    peak = {p: matmul_peak_gflops(args.threads, p) for p in ("fp32", "bf16")}

    rate = {key: len(data[key[1]].splits["train"]) / min(values) for key, values in times.items()}
    print(
        f"CPU native bf16 (AVX512-BF16/AMX): {'yes' if native else 'no: bf16 is emulated'}; "
        f"{args.threads} threads, best of {args.repeats}"
    )
    print(f"training FLOPs per example (forward + backward, FlopCounterMode): {flops / 1e9:.2f} GFLOP")
    print(
        f"matmul peak (1024^2, {args.threads} threads): "
        f"fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s"
    )
    print(f"{'loop':<8}{'precision':<11}{'examples':>9}{'examples/s':>12}{'GFLOP/s':>10}{'of peak':>9}")
    for (loop, precision), examples_per_s in rate.items():
        achieved = flops * examples_per_s / 1e9
        print(
            f"{loop:<8}{precision:<11}{len(data[precision].splits['train']):>9}"
            f"{examples_per_s:>12.1f}{achieved:>10.1f}{achieved / peak[precision]:>9.0%}"
        )
    for precision in ("fp32", "bf16"):
        print(
            f"trial / plain ({precision}) = "
            f"{rate[('trial', precision)] / rate[('plain', precision)]:.3f} (target >= 0.9)"
        )
    for loop in ("plain", "trial"):
        print(f"bf16 / fp32 examples/s ({loop}) = {rate[(loop, 'bf16')] / rate[(loop, 'fp32')]:.2f}")
    print(
        "trial with group_by_length (the default) / plain (fp32) = "
        f"{rate[('grouped', 'fp32')] / rate[('plain', 'fp32')]:.3f} "
        "(its GFLOP/s counts the random batches' padding, which grouping avoids)"
    )
    print(f"training.precision: auto chooses {'bf16' if native else 'fp32'} on this CPU")


if __name__ == "__main__":
    main()
