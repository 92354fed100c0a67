"""Training throughput of an orchestrate trial vs a plain peft + torch loop.

Same model (embedded MiniLM-L6), same LoRA (r=8 on query/value, peft), same data
(embedded Rotten Tomatoes, batch 32, max_length 64, dynamic padding), same threads;
one run, alternating the two loops so machine noise hits both. Prints examples/s of
each and the ratio trial/plain (target >= 0.9), with the trial batching as the plain loop
does (random batches, ``group_by_length: false``); then the trial as it runs by default
(length-grouped batches, less padding) against the same plain loop.

    python benchmarks/throughput.py [--examples 640] [--threads 2] [--repeats 2]

The trial's time is its reported ``train_time_s``: the training epochs only (its
per-epoch validation and FLOP counting are measured work the plain loop does not do,
and are reported separately as ``eval_time_s``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def plain_loop(data, threads: int, seed: int = 0) -> float:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    from orchestrator.tasks.models import load_model, resolve_model

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = load_model(resolve_model("embedded:minilm-l6"), 2, seed)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, target_modules=["query", "value"]))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-4)
    steps = -(-len(data.splits["train"]) // 32)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
    model.train()
    started = time.perf_counter()
    for batch in data.splits["train"].batches(32, data.pad_id, shuffle_seed=seed):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def trial_loop(data, threads: int, seed: int = 0, group_by_length: bool = False) -> float:
    from orchestrator.spec.models import TrainingSpec
    from orchestrator.training import TrialSetup, run_trial

    setup = TrialSetup(arm="lora", method="lora", model="embedded:minilm-l6", metric="accuracy",
                       training=TrainingSpec(epochs=1, batch_size=32, lr=5e-4, group_by_length=group_by_length), fixed={"r": 8}, threads=threads)
    with tempfile.TemporaryDirectory() as tmp:
        final = run_trial(setup, {}, seed, data, lambda m, a: None, Path(tmp))
    return final["train_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from orchestrator.spec.models import TaskSpec
    from orchestrator.tasks.prepare import prepare_task

    task = TaskSpec(train_examples=args.examples, val_examples=64, test_examples=64)
    data = prepare_task(task, Path("."), Path(tempfile.gettempdir()) / "orchestrate-bench-cache")
    plain, trial, grouped = [], [], []
    for _ in range(args.repeats):
        plain.append(plain_loop(data, args.threads))
        trial.append(trial_loop(data, args.threads))
        grouped.append(trial_loop(data, args.threads, group_by_length=True))
    n = len(data.splits["train"])
    best_plain, best_trial, best_grouped = min(plain), min(trial), min(grouped)
    print(f"{n} examples, batch 32, max_length 64, {args.threads} threads, best of {args.repeats}")
    print(f"plain peft + torch loop: {best_plain:.1f} s ({n / best_plain:.1f} examples/s; {1000 * best_plain / n:.1f} s per 1,000)")
    print(f"orchestrate trial:       {best_trial:.1f} s ({n / best_trial:.1f} examples/s)")
    print(f"throughput ratio trial / plain = {best_plain / best_trial:.3f} (target >= 0.9; same random batches)")
    print(f"orchestrate trial, group_by_length (the default): {best_grouped:.1f} s ({n / best_grouped:.1f} examples/s)")
    print(f"throughput ratio grouped trial / plain = {best_plain / best_grouped:.3f}")


if __name__ == "__main__":
    main()
