"""FLOP measurement: LoRA counts exactly 2 r (d_in + d_out) per token per module."""

from __future__ import annotations

import pytest
import torch

from methods import BuildContext, get_method
from orchestrator.measure import flops


def probe_batch(n: int = 4, length: int = 12):
    torch.manual_seed(0)
    ids = torch.randint(1000, 2000, (n, length))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # one padded example: padding must not count
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def ctx(modules=("query", "value")) -> BuildContext:
    return BuildContext(total_steps=10, steps_per_epoch=10, num_labels=2, target_modules=list(modules), seed=0)


@pytest.mark.parametrize("rank, modules", [(8, ("query", "value")), (4, ("query", "key", "value", "intermediate.dense"))])
def test_lora_adapter_flops_per_token_are_exactly_2r_din_dout(tiny_model, rank, modules):
    batch = probe_batch()
    examples = flops.unpadded_examples(batch)
    tokens = flops.non_pad_tokens(batch)
    base = flops.count_flops_unpadded(tiny_model, examples)
    shapes = flops.linear_shapes(tiny_model, list(modules))
    model = get_method("lora").from_params({"r": rank, "target_modules": list(modules)}).build(tiny_model, ctx(modules))
    adapted = flops.count_flops_unpadded(model, examples)
    expected = sum(2 * rank * (d_in + d_out) for _, d_in, d_out in shapes)
    assert flops.adapter_flops_per_token(base, adapted, tokens) == expected


def test_reference_is_unmerged_lora_r8_on_the_same_modules(tiny_model):
    shapes = flops.linear_shapes(tiny_model, ["query", "value"])
    assert len(shapes) == 4  # 2 layers x (query, value)
    assert flops.reference_lora_flops_per_token(tiny_model, ["query", "value"]) == sum(16 * (i + o) for _, i, o in shapes)


def test_merged_lora_costs_zero_adapter_flops(tiny_model):
    batch = probe_batch()
    examples = flops.unpadded_examples(batch)
    base = flops.count_flops_unpadded(tiny_model, examples)
    model = get_method("lora").from_params({"r": 8}).build(tiny_model, ctx())
    merged = model.merge_and_unload()
    assert flops.adapter_flops_per_token(base, flops.count_flops_unpadded(merged, examples), 10) == 0


def test_padding_does_not_inflate_the_count(tiny_model):
    batch = probe_batch()
    padded_total = flops.count_flops(tiny_model, batch)
    unpadded_total = flops.count_flops_unpadded(tiny_model, flops.unpadded_examples(batch))
    assert unpadded_total < padded_total
