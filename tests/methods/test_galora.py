"""GaLoRA: LoRA with a scalar gate per module, proximal L1, pruning. One behaviour per test."""

from __future__ import annotations

import json

import pytest
import torch

from methods import get_method
from methods.base import BuildContext, StepInfo
from methods.galora import GaLoRALinear
from orchestrator.measure.flops import count_flops
from orchestrator.tasks.models import load_model, resolve_model

torch.set_num_threads(1)
REF = resolve_model("random:bert-tiny")  # 2 blocks, hidden 32
HIDDEN = 32
STEP = StepInfo(0, 10, 0, 10)


def build(**params):
    cls = get_method("galora")
    method = cls(cls.Config(**params))
    ctx = BuildContext(total_steps=10, steps_per_epoch=10, num_labels=2, target_modules=["query", "value"], seed=0)
    return method, method.build(load_model(REF, num_labels=2, seed=0), ctx)


def make_batch(batch: int = 4, length: int = 10, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (batch, length), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids), "labels": torch.arange(batch) % 2}


def set_gates(method, model, values):
    with torch.no_grad():
        for layer, value in zip(method.layers(model).values(), values):
            layer.galora_B.normal_()
            layer.galora_gate.fill_(value)


def test_pruning_removes_parameters_and_keeps_outputs_of_kept_modules():
    method, model = build()
    set_gates(method, model, [0.7, 0.05, -0.4, 0.0])  # modules 2 and 4 are pruned
    names = list(method.layers(model))
    batch = make_batch()
    seen = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, (i[0], o))) for n in names]
    model.eval()
    with torch.no_grad():
        model(**batch)
    for h in hooks:
        h.remove()
    params_before = sum(p.numel() for p in model.parameters())

    model = method.finalize(model)

    kept = method.layers(model)
    assert list(kept) == [names[0], names[2]]
    assert all(layer.galora_gate is None for layer in kept.values())  # folded into B
    assert type(model.get_submodule(names[1])) is torch.nn.Linear and type(model.get_submodule(names[3])) is torch.nn.Linear
    removed = 2 * (8 * (HIDDEN + HIDDEN)) + 4  # two pruned adapters, and all four gates
    assert params_before - sum(p.numel() for p in model.parameters()) == removed
    with torch.no_grad():
        for name, layer in kept.items():
            x, y = seen[name]
            assert torch.allclose(layer(x), y, atol=1e-6)
    stats = method.stats(model)
    assert stats["kept_modules"] == 2 and stats["kept_fraction"] == 0.5 and stats["total_rank"] == 16
    assert stats["trainable_params_final"] == 2 * 8 * (2 * HIDDEN)


def test_proximal_step_is_gradient_step_then_soft_threshold():
    method, model = build(lam=0.01, gate_lr=2.0)
    layers = list(method.layers(model).values())
    start = [1.0, 0.015, -0.5, 0.3]
    grads = [0.1, 0.0, -0.2, 0.2]
    with torch.no_grad():
        for layer, g0, grad in zip(layers, start, grads):
            layer.galora_gate.fill_(g0)
            layer.galora_gate.grad = torch.tensor(grad)
    method.after_optimizer_step(model, STEP)
    got = [float(layer.galora_gate.detach()) for layer in layers]
    # g - 2 grad, then shrink by 2 * 0.01 towards 0 (exact zero when it would cross)
    assert got == pytest.approx([1.0 - 0.2 - 0.02, 0.0, -0.5 + 0.4 + 0.02, -0.08], abs=1e-7)


def test_gates_reach_exact_zero_with_a_large_lambda_and_all_stay_without_one():
    for lam, alive in ((1.0, 0), (0.0, 4)):
        method, model = build(lam=lam, gate_lr=0.5)
        optimizer = torch.optim.AdamW(method.param_groups(model, 0.0), lr=1e-2)
        model.train()
        for step in range(8):
            out = model(**make_batch(seed=step))
            out.loss.backward()
            optimizer.step()
            method.after_optimizer_step(model, StepInfo(step, 8, 0, 8))
            optimizer.zero_grad()
        gates = [layer.gate_value() for layer in method.layers(model).values()]
        assert sum(g != 0.0 for g in gates) == alive
        assert method.after_evaluation(model, STEP, 0.0)["live_gate_fraction"] == alive / 4
        model = method.finalize(model)
        assert method.stats(model)["kept_modules"] == alive


def test_optimizer_groups_leave_gates_out_and_decay_a_and_b_equally():
    method, model = build(factor_l2=0.3)
    groups = method.param_groups(model, weight_decay=0.01)
    named = {id(p): n for n, p in model.named_parameters()}
    in_groups = {named[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    assert not any(n.endswith("galora_gate") for n in in_groups)
    factor_decay = {d for n, d in in_groups.items() if n.endswith(("galora_A", "galora_B"))}
    assert factor_decay == {0.3}
    assert in_groups["classifier.weight"] == 0.01 and in_groups["classifier.bias"] == 0.0
    assert sum(n.endswith(("galora_A", "galora_B")) for n in in_groups) == 8


def test_pruned_model_flops_are_the_kept_modules_lora_flops():
    batch = make_batch()
    base = count_flops(load_model(REF, num_labels=2, seed=0), batch)
    method, model = build()
    set_gates(method, model, [0.5, 0.0, 0.0, 0.2])
    model = method.finalize(model)
    tokens = batch["input_ids"].numel()
    assert count_flops(model, batch) - base == 2 * (2 * 8 * (HIDDEN + HIDDEN)) * tokens


def test_only_adapter_and_head_train(tmp_path):
    method, model = build()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("galora_" in n or n.startswith("classifier.") for n in trainable)
    assert sum(n.startswith("classifier.") for n in trainable) == 2
    assert isinstance(model.get_submodule("bert.encoder.layer.0.attention.self.query"), GaLoRALinear)
    model = method.finalize(model)
    files = method.write_artifacts(model, tmp_path)
    assert {f.name for f in files} == {"galora_gates.json", "galora_gates.png"}
    assert len(json.loads(files[0].read_text())) == 4
