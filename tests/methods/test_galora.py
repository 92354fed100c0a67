"""GaLoRA: LoRA with a scalar gate per module, proximal L1, pruning. One behaviour per test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from methods import get_method
from methods.base import BuildContext, StepInfo
from methods.galora import GaLoRALinear
from orchestrator.measure.flops import count_flops
from orchestrator.spec.checks import load_space
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
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "labels": torch.arange(batch) % 2,
    }


def set_gates(method, model, values):
    with torch.no_grad():
        for layer, value in zip(method.layers(model).values(), values, strict=True):
            layer.galora_B.normal_()
            layer.galora_gate.fill_(value)


def test_pruning_removes_parameters_and_keeps_outputs_of_kept_modules():
    method, model = build()
    set_gates(method, model, [0.7, 0.05, -0.4, 0.0])  # modules 2 and 4 are pruned
    names = list(method.layers(model))
    batch = make_batch()
    seen = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, (i[0], o)))
        for n in names
    ]
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
    assert (
        type(model.get_submodule(names[1])) is torch.nn.Linear
        and type(model.get_submodule(names[3])) is torch.nn.Linear
    )
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
        for layer, g0, grad in zip(layers, start, grads, strict=True):
            layer.galora_gate.fill_(g0)
            layer.gate_grad = torch.tensor(grad)
    method.after_optimizer_step(model, STEP)
    got = [float(layer.galora_gate.detach()) for layer in layers]
    # g - 2 grad, then shrink by 2 * 0.01 towards 0 (exact zero when it would cross)
    assert got == pytest.approx([1.0 - 0.2 - 0.02, 0.0, -0.5 + 0.4 + 0.02, -0.08], abs=1e-7)
    assert all(layer.gate_grad is None for layer in layers)  # used once


def own_gate_gradients(method, model):
    """dL/dg of each gate from the chain rule, dL/dg = <dL/dy, s B A x>, read from the
    layer's input and its output's gradient: independent of how the gate is trained."""
    grads, hooks = {}, []

    def record(layer, inputs, output, name):
        update = (
            layer.scale
            * torch.nn.functional.linear(
                torch.nn.functional.linear(inputs[0], layer.galora_A), layer.galora_B
            ).detach()
        )
        output.register_hook(lambda grad_out: grads.__setitem__(name, float((grad_out * update).sum())))

    for name, layer in method.layers(model).items():
        hooks.append(layer.register_forward_hook(lambda m, i, o, name=name: record(m, i, o, name)))
    return grads, hooks


@pytest.mark.parametrize("max_grad_norm", [None, 1e-3], ids=["no-clipping", "tight-clipping"])
def test_each_gate_step_uses_exactly_that_steps_gradient(max_grad_norm):
    """The loop zeroes only the optimizer's gradients; the gates are not in it. With
    lam = 0 the gate step is g <- g - eta * grad, so the gradient it used is read off
    the gate's move and compared with the step's own dL/dg: not a sum over past steps
    and, when the loop's clipping fires (every step at 1e-3), not clipped."""
    eta = 10.0
    method, model = build(lam=0.0, gate_lr=eta, factor_l2=1e-3)
    model.double().eval()  # no dropout: the step's forward is the one the chain rule reads
    optimizer = torch.optim.AdamW(method.param_groups(model, 0.0), lr=1e-2)
    gates = [layer.galora_gate for layer in method.layers(model).values()]
    own, hooks = own_gate_gradients(method, model)
    largest = 0.0
    for step in range(5):
        before = [float(g.detach()) for g in gates]
        extra = method.extra_loss(model, StepInfo(step, 5, 0, 5))
        loss = model(**make_batch(seed=step)).loss + (0.0 if extra is None else extra)
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
        optimizer.step()
        method.after_optimizer_step(model, StepInfo(step, 5, 0, 5))
        optimizer.zero_grad(set_to_none=True)
        seen = [(b - float(g.detach())) / eta for b, g in zip(before, gates, strict=True)]
        expected = [own[name] for name in method.layers(model)]  # 0 at step 0, where B = 0
        largest = max(largest, *map(abs, expected))
        assert seen == pytest.approx(expected, rel=1e-6, abs=1e-12), f"step {step}"
    for h in hooks:
        h.remove()
    assert largest > 1e-5  # real gradients, not a vacuous match of zeros


def test_gate_gradients_stay_out_of_the_optimizers_gradient_clipping():
    """The loop clips every parameter's ``.grad``: the gates' must hold nothing."""
    method, model = build()
    set_gates(method, model, [1.0, 1.0, 1.0, 1.0])  # B != 0, so dL/dg != 0
    layers = list(method.layers(model).values())
    for step in range(2):
        model(**make_batch(seed=step)).loss.backward()
        assert all(layer.galora_gate.grad is None or float(layer.galora_gate.grad) == 0.0 for layer in layers)
        assert all(
            layer.gate_grad is not None and float(layer.gate_grad) != 0.0 for layer in layers
        )  # kept for the gate step
        method.after_optimizer_step(model, StepInfo(step, 2, 0, 2))


def penalised_objective(method, model, batch):
    """L_task + lambda sum|g| + the method's extra loss: what training minimises."""
    with torch.no_grad():
        lam_term = method.config.lam * sum(abs(layer.gate_value()) for layer in method.layers(model).values())
        extra = method.extra_loss(model, STEP)
        return float(model(**batch).loss) + lam_term + (0.0 if extra is None else float(extra))


def test_rescaling_gates_against_b_at_equal_function_cannot_lower_the_objective():
    """g -> g/c, B -> cB keeps every output; with the penalty lam |g| alone the
    objective would fall towards L_task as c grows. Each module is put at its balance
    lam |g| = 2 mu ||B||^2, where c = 1 minimises lam |g|/c + mu c^2 ||B||^2."""
    lam, mu = 0.02, 1e-3
    method, model = build(lam=lam, factor_l2=mu)
    model.eval()
    batch = make_batch()
    with torch.no_grad():
        for layer in method.layers(model).values():
            layer.galora_gate.fill_(0.5)
            layer.galora_B.normal_()
            layer.galora_B.mul_((lam * 0.5 / (2 * mu)) ** 0.5 / layer.galora_B.norm())
    logits = model(**batch).logits.detach()
    base = penalised_objective(method, model, batch)
    for c in (0.1, 0.5, 2.0, 10.0, 1000.0):
        with torch.no_grad():
            for layer in method.layers(model).values():
                layer.galora_gate.div_(c)
                layer.galora_B.mul_(c)
        assert torch.allclose(model(**batch).logits, logits, atol=1e-5)
        assert penalised_objective(method, model, batch) > base + 1e-6, f"c = {c}"
        with torch.no_grad():
            for layer in method.layers(model).values():
                layer.galora_gate.mul_(c)
                layer.galora_B.div_(c)


def test_factor_l2_zero_is_refused_and_the_search_space_cannot_offer_it():
    cls = get_method("galora")
    with pytest.raises(ValidationError):
        cls.Config(factor_l2=0.0)
    space = load_space(Path(__file__).resolve().parents[2] / "search_spaces" / "galora.yaml").space
    spec = space.params["factor_l2"]
    values = spec.choices if spec.type == "categorical" else [spec.low, spec.high]
    for value in values:
        cls.Config(factor_l2=value)  # raises on 0 or below


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


def test_optimizer_groups_leave_gates_out_and_a_and_b_to_the_loss_l2():
    method, model = build(factor_l2=0.3)
    groups = method.param_groups(model, weight_decay=0.01)
    named = {id(p): n for n, p in model.named_parameters()}
    in_groups = {named[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    assert not any(n.endswith("galora_gate") for n in in_groups)
    factor_decay = {d for n, d in in_groups.items() if n.endswith(("galora_A", "galora_B"))}
    assert factor_decay == {0.0}  # their L2 is in the loss, not a decoupled decay
    layers = method.layers(model).values()
    expected = 0.3 * sum(
        float(layer.galora_A.detach().pow(2).sum() + layer.galora_B.detach().pow(2).sum()) for layer in layers
    )
    assert float(method.extra_loss(model, STEP).detach()) == pytest.approx(expected, rel=1e-6)
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
