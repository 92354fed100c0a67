"""Wall time of routed inference against unmerged and merged LoRA-r8, in one run.

    python benchmarks/routed_inference.py [--model random:bert-tiny|embedded:minilm-l6]
                                          [--activity 0.3] [--rank 8] [--examples 512]

Untrained adapters are used with their routing *forced*: each (example, block) for
RAD-LoRA and each (example, module) for CoGaLoRA is active with probability
``--activity`` at rank ``--rank`` (wall time depends on shapes, not on weights). The
models run in eval mode over the same examples (batches of ``--batch``, padded to the
longest in the batch, as the engine does), interleaved ``--repeats`` times; the tables
give the sum over batches of each batch's median and best time over the repeats (the
best is the least disturbed by other load on the machine), the ratios against unmerged LoRA-r8 and merged LoRA-r8
(peft ``merge_and_unload``: no extra FLOPs at all), and the adapter FLOPs per token
measured by FlopCounterMode on single unpadded examples, relative to unmerged LoRA-r8.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def texts_for(model_ref: str, count: int) -> list[str]:
    from orchestrator.tasks.datasets import load_dataset

    dataset = "synthetic:polarity" if model_ref.startswith("random:") else "embedded:rotten-tomatoes"
    data = load_dataset(dataset, Path("."))
    texts = [t for split in ("test", "validation", "train") for t in data.splits[split][0]]
    return (texts * (count // max(1, len(texts)) + 1))[:count]


def build_models(ref, activity: float, rank: int, target_modules: list[str]):
    import copy

    from peft import get_peft_model

    from methods import BuildContext, get_method
    from methods._routing import force_routing
    from methods.lora import LoraMethodConfig, lora_config
    from orchestrator.tasks.models import head_modules, load_model

    base = load_model(ref, num_labels=2, seed=0)
    ctx = BuildContext(
        total_steps=1,
        steps_per_epoch=1,
        num_labels=2,
        target_modules=target_modules,
        seed=0,
        head_modules=head_modules(base),
    )
    unmerged = get_peft_model(copy.deepcopy(base), lora_config(LoraMethodConfig(r=8), ctx))
    merged = copy.deepcopy(unmerged).merge_and_unload()
    models = {"base (no adapter)": base, "LoRA-r8 unmerged": unmerged, "LoRA-r8 merged": merged}
    for name, params in (("radlora", {"r_max": 8}), ("cogalora", {"r": 8})):
        cls = get_method(name)
        model = cls(cls.Config(**params)).build(copy.deepcopy(base), ctx)
        force_routing(model, activity=activity, rank=rank)
        models[f"{name} (activity {activity:g}, rank {rank})"] = model
    for model in models.values():
        model.eval()
    return models


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:minilm-l6")
    parser.add_argument(
        "--activity", type=float, default=0.3, help="fraction of (example, unit) pairs whose adapter runs"
    )
    parser.add_argument("--rank", type=int, default=8, help="rank of the active routed adapters")
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)

    import torch

    from orchestrator.measure.flops import (
        count_flops_unpadded,
        non_pad_tokens,
        reference_lora_flops_per_token,
        unpadded_examples,
    )
    from orchestrator.tasks.models import default_target_modules, load_model, load_tokenizer, resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    ref = resolve_model(args.model)
    tokenizer = load_tokenizer(ref)
    texts = texts_for(args.model, args.examples)
    batches = []
    for start in range(0, len(texts), args.batch):
        enc = tokenizer(
            texts[start : start + args.batch],
            padding=True,
            truncation=True,
            max_length=args.max_length,
            return_tensors="pt",
        )
        batches.append(dict(enc))
    targets = default_target_modules(load_model(ref, num_labels=2, seed=0))
    models = build_models(ref, args.activity, args.rank, targets)

    # per_batch[name][i]: the times of batch i over the repeats
    per_batch: dict[str, list[list[float]]] = {name: [[] for _ in batches] for name in models}
    with torch.no_grad():
        for model in models.values():  # warm up every code path once
            model(**batches[0])
        for _ in range(args.repeats):
            for name, model in models.items():
                for index, batch in enumerate(batches):
                    started = time.perf_counter()
                    model(**batch)
                    per_batch[name][index].append(time.perf_counter() - started)

    probe = unpadded_examples(batches[0])
    tokens = non_pad_tokens(batches[0])
    base_probe = count_flops_unpadded(models["base (no adapter)"], probe)
    reference = reference_lora_flops_per_token(models["base (no adapter)"], targets)
    print(
        f"model {args.model}, {len(texts)} examples, batch {args.batch}, threads {torch.get_num_threads()}, "
        f"targets {','.join(targets)}, {args.repeats} interleaved passes; FLOPs on {len(probe)} unpadded examples"
    )
    for label, pick in (("median", statistics.median), ("best", min)):
        best = {name: sum(pick(values) for values in batches_) for name, batches_ in per_batch.items()}
        unmerged, merged = best["LoRA-r8 unmerged"], best["LoRA-r8 merged"]
        print(
            f"{label + ' wall time':44s} {'s':>8s} {'/unmerged':>10s} {'/merged':>8s} {'adapter FLOPs/LoRA-r8':>22s}"
        )
        for name, model in models.items():
            adapter = max(0, count_flops_unpadded(model, probe) - base_probe) / tokens / reference
            print(
                f"{name:44s} {best[name]:8.3f} {best[name] / unmerged:10.3f} "
                f"{best[name] / merged:8.3f} {adapter:22.3f}"
            )


if __name__ == "__main__":
    main()
