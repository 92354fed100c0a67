"""CoGaLoRA: per-module, per-input gated LoRA. One behaviour per test."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from bert_tiny import base_model, build_method, make_batch

from methods import get_method
from methods._routing import RoutingSchedule, TokenMask, force_routing
from methods.base import StepInfo
from methods.cogalora import CoGaLoRALinear
from orchestrator.measure.flops import count_flops

torch.set_num_threads(1)
HIDDEN, MODULES = 32, 4  # query and value in 2 blocks
build = partial(build_method, "cogalora")


def router_prob(layer, x):
    return torch.sigmoid(layer.cogalora_router(x.mean(1))).squeeze(-1).mean()


@pytest.mark.parametrize("gate", ["bernoulli", "gumbel"])
def test_gate_probability_moves_towards_lower_loss(gate):
    torch.manual_seed(0)
    config = get_method("cogalora").Config(r=4, gate=gate, gate_bias_init=0.0)
    schedule = RoutingSchedule(total_steps=100, warmup_fraction=0.0)
    layer = CoGaLoRALinear(torch.nn.Linear(HIDDEN, HIDDEN), config, schedule, TokenMask(), "b.0", "q")
    with torch.no_grad():
        layer.cogalora_B.normal_()
    x = torch.randn(64, 6, HIDDEN)
    with torch.no_grad():
        base = layer.base_layer(x)
        helpful = base + layer.scale * F.linear(F.linear(x, layer.cogalora_A), layer.cogalora_B)
    moved = {}
    for case, target in (("adapter helps", helpful), ("adapter hurts", base)):
        with torch.no_grad():
            layer.cogalora_router[2].bias.zero_()
        optimizer = torch.optim.SGD(layer.cogalora_router.parameters(), lr=0.05)
        before = router_prob(layer, x).detach()
        for _ in range(30):
            loss = F.mse_loss(layer(x), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        moved[case] = float(router_prob(layer, x).detach() - before)
    assert moved["adapter helps"] > 0.05
    assert moved["adapter hurts"] < -0.05


def test_penalty_is_lambda_times_mean_gate_probability_and_lowers_it():
    method, model = build(lam=0.3, warmup_fraction=0.0)
    model.train()
    model(**make_batch())
    probs = torch.stack([layer.last_prob.mean() for layer in method.layers(model)]).mean()
    penalty = method.extra_loss(model, StepInfo(0, 20, 0, 20))
    assert torch.isclose(penalty, 0.3 * probs)
    penalty.backward()
    for layer in method.layers(model):
        assert layer.cogalora_router[2].bias.grad.item() > 0  # descent lowers p


def test_forced_off_gates_cost_exactly_the_routers():
    batch = make_batch()
    base = count_flops(base_model(), batch)
    _method, model = build()
    force_routing(model, activity=0.0)
    b, t = batch["input_ids"].shape
    router = 2 * b * t * HIDDEN + 2 * b * (HIDDEN * 4 + 4 * 1)
    assert count_flops(model, batch) - base == MODULES * router


def test_active_adapters_cost_lora_on_real_tokens_only():
    batch = make_batch()
    base = count_flops(base_model(), batch)
    _method, model = build(r=8)
    force_routing(model, activity=0.0)
    routers = count_flops(model, batch) - base
    force_routing(model, activity=1.0)
    tokens = int(batch["attention_mask"].sum())
    assert count_flops(model, batch) - base - routers == MODULES * 2 * 8 * (2 * HIDDEN) * tokens


def test_bucketed_inference_equals_dense_masked_reference(monkeypatch):
    batch = make_batch(lengths=(12, 3, 7, 12, 10, 5), seed=3)
    batch["labels"] = torch.tensor([0, 1, 0, 1, 0, 1])
    _method, model = build()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("cogalora_B"):
                param.normal_()
    force_routing(model, activity=0.5, seed=2)
    model.eval()
    with torch.no_grad():
        routed = model(**batch, output_hidden_states=True)

    def dense_forward(self, x):
        logit = self.cogalora_router(x.mean(1)).squeeze(-1)  # router run for its side effects only
        on, _ = self.hard_decision(
            torch.sigmoid(logit) > 0.5,
            torch.zeros_like(logit, dtype=torch.long),
            torch.ones(x.shape[:2], dtype=torch.bool),
        )
        return self.base_layer(x) + on.to(x.dtype)[:, None, None] * self._update(x)

    monkeypatch.setattr(CoGaLoRALinear, "forward", dense_forward)
    force_routing(model, activity=0.5, seed=2)
    with torch.no_grad():
        dense = model(**batch, output_hidden_states=True)
    assert torch.allclose(routed.logits, dense.logits, atol=1e-5)
    real = batch["attention_mask"].bool()
    assert torch.allclose(routed.hidden_states[-1][real], dense.hidden_states[-1][real], atol=1e-4)


def test_inference_gate_uses_threshold_tau_and_stats_count_active_modules():
    for tau, expected in ((0.5, MODULES), (0.7, 0)):
        method, model = build(gate_threshold=tau, gate_bias_init=0.0)
        with torch.no_grad():
            for layer in method.layers(model):
                layer.cogalora_router[2].weight.zero_()
                layer.cogalora_router[2].bias.fill_(0.4)  # p = 0.599 for every input
        model.eval()
        method.start_eval_stats(model)
        with torch.no_grad():
            model(**make_batch())
        stats = method.end_eval_stats(model)
        assert stats["active_layers"] == expected and stats["total_rank"] == 8 * expected
        assert set(stats) <= set(method.metrics)


def test_warmup_keeps_every_gate_on_and_skips_the_penalty():
    method, model = build(total_steps=20, warmup_fraction=0.5, gate_bias_init=-5.0)  # p ~ 0.007
    model.train()
    torch.manual_seed(0)
    out = model(**make_batch())
    assert method.extra_loss(model, StepInfo(0, 20, 0, 20)) is None
    layer = method.layers(model)[0]
    assert torch.equal(layer.gate(torch.full((4,), 0.007), torch.full((4,), -5.0)), torch.ones(4))
    method.after_optimizer_step(model, StepInfo(9, 20, 0, 20))  # 10 of 20 steps done: warmup over
    assert not method.layers(model)[0].schedule.in_warmup
    gates = [layer.gate(torch.full((4,), 0.007), torch.full((4,), -5.0)) for layer in method.layers(model)]
    assert sum(float(g.sum()) for g in gates) < 4  # now mostly off
    assert out.loss.isfinite()
