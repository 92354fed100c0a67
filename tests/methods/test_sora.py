"""SoRA: gated LoRA, proximal soft-thresholding of the gates, pruning at finalize."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from methods import get_method
from methods._masked_lora import MaskedLoraLinear
from methods.base import BuildContext, StepInfo
from methods.sora import SoraConfig, soft_threshold_, xi_at
from orchestrator.measure.flops import count_flops
from orchestrator.tasks.models import load_model, resolve_model

torch.set_num_threads(1)


def tiny_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (3, 9), generator=g)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "labels": torch.tensor([0, 1, 1]),
    }


def build(**params):
    method = get_method("sora")(SoraConfig(**params))
    model = load_model(resolve_model("random:bert-tiny"), num_labels=2, seed=0)
    ctx = BuildContext(total_steps=100, steps_per_epoch=10, num_labels=2, target_modules=["query", "value"], seed=0)
    return method, method.build(model, ctx)


def layers(model: nn.Module) -> list[MaskedLoraLinear]:
    return [m for m in model.modules() if isinstance(m, MaskedLoraLinear)]


def test_soft_threshold_zeroes_small_gates_and_shrinks_the_rest_by_xi():
    gate = torch.tensor([0.5, -0.5, 0.05, -0.05, 0.1, 0.0, -2.0])
    soft_threshold_(gate, 0.1)
    torch.testing.assert_close(gate, torch.tensor([0.4, -0.4, 0.0, 0.0, 0.0, 0.0, -1.9]))


def test_after_optimizer_step_thresholds_every_gate():
    method, model = build(xi=0.3, gate_init="randn")
    before = [layer.lora_gate.detach().clone() for layer in layers(model)]
    method.after_optimizer_step(model, StepInfo(0, 100, 0, 10))
    for old, layer in zip(before, layers(model), strict=True):
        expected = torch.sign(old) * torch.clamp(old.abs() - 0.3, min=0)
        torch.testing.assert_close(layer.lora_gate.detach(), expected)
        assert torch.all(layer.lora_gate[old.abs() <= 0.3] == 0)


def test_xi_schedules_run_from_xi_to_xi_max():
    for schedule in ("linear", "log_linear", "exp_linear"):
        cfg = SoraConfig(xi=1e-4, xi_max=1e-2, xi_schedule=schedule)
        assert xi_at(cfg, 0.0) == pytest.approx(1e-4)
        assert xi_at(cfg, 1.0) == pytest.approx(1e-2)
        assert 1e-4 < xi_at(cfg, 0.5) < 1e-2
    assert xi_at(SoraConfig(xi=3e-4), 0.7) == 3e-4
    with pytest.raises(ValueError, match="xi_max"):
        SoraConfig(xi_schedule="linear")


def test_extra_loss_is_l1_weight_times_mean_abs_gate():
    method, model = build(l1_weight=0.5)
    gates = torch.cat([layer.lora_gate.detach() for layer in layers(model)])
    loss = method.extra_loss(model, StepInfo(0, 100, 0, 10))
    assert loss.item() == pytest.approx(0.5 * gates.abs().mean().item(), rel=1e-6)
    loss.backward()
    assert all(layer.lora_gate.grad is not None for layer in layers(model))
    assert build(l1_weight=0.0)[0].extra_loss(model, StepInfo(0, 100, 0, 10)) is None


def test_finalize_drops_zero_ranks_folds_the_gate_and_keeps_outputs():
    method, model = build(r_max=8, gate_init="randn")
    torch.manual_seed(1)
    with torch.no_grad():
        for i, layer in enumerate(layers(model)):
            layer.lora_B.normal_()
            layer.lora_gate[: 2 + i] = 0  # module i keeps 6 - i ranks
    model.eval()
    batch = tiny_batch()
    flops_before = count_flops(model, batch)
    with torch.no_grad():
        before = model(**batch).logits
    model = method.finalize(model)
    with torch.no_grad():
        after = model(**batch).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    kept = [layer.rank for layer in layers(model)]
    assert kept == [6, 5, 4, 3]
    for layer, r in zip(layers(model), kept, strict=True):
        assert layer.lora_gate is None
        assert layer.lora_A.shape == (r, layer.in_features) and layer.lora_B.shape == (layer.out_features, r)
    stats = method.stats(model)
    assert stats["total_rank"] == 18
    assert stats["trainable_params_final"] == 18 * (32 + 32)
    assert stats["kept_modules"] == 4
    assert stats["gate_density"] == pytest.approx(18 / 32)
    tokens = batch["input_ids"].numel()
    assert flops_before - count_flops(model, batch) == 2 * tokens * (32 - 18) * (32 + 32)


def test_finalize_replaces_fully_pruned_modules_by_their_base_layer():
    method, model = build(r_max=4)
    with torch.no_grad():
        layers(model)[0].lora_gate.zero_()
    model = method.finalize(model)
    query = model.bert.encoder.layer[0].attention.self.query
    assert type(query) is nn.Linear
    assert method.stats(model)["kept_modules"] == 3


def test_finalize_with_merge_costs_no_flops_and_keeps_outputs():
    method, model = build(merge=True)
    with torch.no_grad():
        for layer in layers(model):
            layer.lora_B.normal_()
    model.eval()
    batch = tiny_batch()
    with torch.no_grad():
        before = model(**batch).logits
    model = method.finalize(model)
    base = load_model(resolve_model("random:bert-tiny"), num_labels=2, seed=0)
    assert count_flops(model, batch) == count_flops(base, batch)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, before, rtol=1e-5, atol=1e-5)


def test_gates_train_without_weight_decay_and_b_with_it():
    method, model = build()
    groups = method.param_groups(model, weight_decay=0.1)
    by_id = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    for layer in layers(model):
        assert by_id[id(layer.lora_gate)] == 0.0
        assert by_id[id(layer.lora_B)] == 0.1
