"""RAD-LoRA: routed nested LoRA. One behaviour per test (METHODS.md section 6)."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from bert_tiny import base_model, build_method, make_batch

from methods import get_method
from methods._routing import RoutingSchedule, TokenMask, force_routing, gumbel_softmax_st, nested_mask
from methods.base import StepInfo
from methods.radlora import BlockRouter, RadLoRALinear, hyper_param_count
from orchestrator.measure.flops import count_flops

torch.set_num_threads(1)
HIDDEN, BLOCKS = 32, 2
build = partial(build_method, "radlora")


def randomize(model, seed: int = 1, scale: float = 0.5):
    """Non-zero B and generators, and routers whose decisions vary per example."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "radlora" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


def past_warmup(method, model, step: int = 10, total: int = 20):
    method.after_optimizer_step(model, StepInfo(step - 1, total, 0, total))


def test_gate_probability_moves_towards_lower_loss():
    torch.manual_seed(0)
    base = torch.nn.Linear(HIDDEN, HIDDEN)
    schedule = RoutingSchedule(total_steps=100, warmup_fraction=0.0, expected_until=1.0)
    router = BlockRouter(HIDDEN, 16, 4, 0.0, 0.5, None, schedule, TokenMask(), "b.0", [("q", 128)])
    layer = RadLoRALinear(base, 4, 1.0, router, None)
    with torch.no_grad():
        layer.radlora_B.normal_()
    x = torch.randn(64, 6, HIDDEN)
    with torch.no_grad():
        helpful = base(x) + layer.scale * F.linear(F.linear(x, layer.radlora_A), layer.radlora_B)
    moved = {}
    for case, target in (("adapter helps", helpful), ("adapter hurts", base(x).detach())):
        with torch.no_grad():
            router.fc_out.bias.zero_()
        optimizer = torch.optim.SGD(router.parameters(), lr=0.05)
        before = torch.sigmoid(router.fc_out(F.gelu(router.fc_in(router.norm(x.mean(1)))))[:, 0]).mean()
        for _ in range(30):
            router.decision = router(x)
            loss = F.mse_loss(layer(x), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        after = torch.sigmoid(router.fc_out(F.gelu(router.fc_in(router.norm(x.mean(1)))))[:, 0]).mean()
        moved[case] = float((after - before).detach())
    assert moved["adapter helps"] > 0.05
    assert moved["adapter hurts"] < -0.05


def test_nested_rank_mask_gives_exactly_a_rank_k_product():
    torch.manual_seed(0)
    r_max = 6
    a, b = torch.randn(r_max, 10, dtype=torch.float64), torch.randn(12, r_max, dtype=torch.float64)
    for k in range(1, r_max + 1):
        mask = nested_mask(F.one_hot(torch.tensor(k - 1), r_max).double())
        assert mask.tolist() == [1.0] * k + [0.0] * (r_max - k)
        product = b @ torch.diag(mask) @ a
        assert torch.equal(product, b[:, :k] @ a[:k])
        assert torch.linalg.matrix_rank(product) == k
    sample = gumbel_softmax_st(torch.randn(5, r_max), 0.5)
    assert set(nested_mask(sample).detach().unique().tolist()) <= {0.0, 1.0}
    probs = torch.softmax(torch.randn(r_max), -1)
    assert torch.isclose(nested_mask(probs).sum(), (probs * torch.arange(1, r_max + 1)).sum())


def router_flops(batch, r_max=8, hidden=16, hyper_dim=0):
    b, t = batch["input_ids"].shape
    per_block = 2 * b * t * HIDDEN + 2 * b * (HIDDEN * hidden + hidden * (1 + r_max)) + 2 * b * HIDDEN * hyper_dim
    return BLOCKS * per_block


@pytest.mark.parametrize("generator", ["static", "hyper"])
def test_forced_off_gates_cost_exactly_the_router(generator):
    batch = make_batch()
    base = count_flops(base_model(), batch)
    _method, model = build(generator=generator)
    force_routing(model, activity=0.0)
    hyper_dim = 4 if generator == "hyper" else 0
    assert count_flops(model, batch) - base == router_flops(batch, hyper_dim=hyper_dim)


@pytest.mark.parametrize("generator", ["static", "hyper"])
def test_active_adapter_flops_scale_with_real_tokens_and_rank(generator):
    batch = make_batch()
    base = count_flops(base_model(), batch)
    _method, model = build(generator=generator)
    hyper_dim = 4 if generator == "hyper" else 0
    tokens, examples, modules = int(batch["attention_mask"].sum()), 4, 2 * BLOCKS
    for k in (1, 3, 8):
        force_routing(model, activity=1.0, rank=k)
        adapter = count_flops(model, batch) - base - router_flops(batch, hyper_dim=hyper_dim)
        per_module = 2 * k * (HIDDEN + HIDDEN) * tokens + 2 * examples * hyper_dim * k * (HIDDEN + HIDDEN)
        assert adapter == modules * per_module


def test_hyper_generator_parameter_count_matches_formula():
    method, model = build(generator="hyper", hyper_dim=3, r_max=5)
    counted = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.endswith(("radlora_GA", "radlora_GB")) or ".radlora_router.code." in n
    )
    expected = hyper_param_count([HIDDEN] * BLOCKS, [(HIDDEN, HIDDEN)] * (2 * BLOCKS), r_max=5, hyper_dim=3)
    assert counted == expected == BLOCKS * 3 * (HIDDEN + 1) + 2 * BLOCKS * 3 * 5 * (2 * HIDDEN)
    assert method.stats(model)["generator_params"] == expected
    # BERT-base, q and v, c = 4, r_max = 8: the figure documented in layer.py
    assert hyper_param_count([768] * 12, [(768, 768)] * 24, r_max=8, hyper_dim=4) == 1_216_560


@pytest.mark.parametrize("generator", ["static", "hyper"])
def test_bucketed_inference_equals_dense_masked_reference(generator, monkeypatch):
    batch = make_batch(lengths=(12, 3, 7, 12, 10, 5), seed=3)
    batch["labels"] = torch.tensor([0, 1, 0, 1, 0, 1])
    method, model = build(generator=generator)
    randomize(model, scale=1.0)
    force_routing(model, activity=0.6, rank=0, seed=5)  # mixed on/off and ranks 1..8
    model.eval()
    method.start_eval_stats(model)
    with torch.no_grad():
        routed = model(**batch, output_hidden_states=True)
    decisions = [d for r in method.routers(model) for d in r.decisions]
    method.end_eval_stats(model)
    assert any((~d.on).any() for d in decisions) and len(torch.cat([d.rank[d.on] for d in decisions]).unique()) >= 2

    def dense_forward(self, x):
        decision = self.router.decision
        mask = nested_mask(F.one_hot(decision.rank - 1, self.r_max).to(x.dtype))
        return self.base_layer(x) + self.dense_reference(x, decision.on.to(x.dtype), mask, decision.code)

    monkeypatch.setattr(RadLoRALinear, "forward", dense_forward)
    force_routing(model, activity=0.6, rank=0, seed=5)  # the same decisions again
    with torch.no_grad():
        dense = model(**batch, output_hidden_states=True)
    assert torch.allclose(routed.logits, dense.logits, atol=1e-5)
    real = batch["attention_mask"].bool()
    for h_routed, h_dense in zip(routed.hidden_states, dense.hidden_states, strict=True):
        assert torch.allclose(h_routed[real], h_dense[real], atol=1e-4)


def test_padding_does_not_change_routing_or_outputs():
    _method, model = build()
    randomize(model, scale=1.0)
    model.eval()
    short = make_batch(lengths=(6, 6))
    padded = {
        k: torch.cat([v, torch.zeros(v.shape[0], 5, dtype=v.dtype)], 1) if v.dim() == 2 else v
        for k, v in short.items()
    }
    with torch.no_grad():
        assert torch.allclose(model(**short).logits, model(**padded).logits, atol=1e-5)


def test_warmup_forces_everything_on_then_routes_with_gradients():
    method, model = build(total_steps=20, warmup_fraction=0.25)
    batch = make_batch()
    model.train()
    model(**batch)
    for router in method.routers(model):
        assert torch.equal(router.decision.gate, torch.ones(4)) and torch.equal(router.decision.mask, torch.ones(4, 8))
    assert method.extra_loss(model, StepInfo(0, 20, 0, 20)) is None
    randomize(model, scale=0.3)
    past_warmup(method, model, step=10)
    method.dual_lambda = 1.0
    out = model(**batch)
    (out.loss + method.extra_loss(model, StepInfo(10, 20, 0, 20))).backward()
    for router in method.routers(model):
        assert set(router.decision.gate.detach().tolist()) <= {0.0, 1.0}
        assert router.fc_out.weight.grad is not None and router.fc_out.weight.grad.abs().sum() > 0


def test_dual_ascent_raises_lambda_above_target_and_clips_at_zero():
    method, model = build(total_steps=20, target_rho=0.1, dual_lr=2.0, warmup_fraction=0.0, budget_anneal_until=0.0)
    model.train()
    model(**make_batch())
    method.extra_loss(model, StepInfo(0, 20, 0, 20))
    rho = method._train_rho
    assert rho > 0.1
    method.after_optimizer_step(model, StepInfo(0, 20, 0, 20))
    assert method.dual_lambda == pytest.approx(2.0 * (rho - 0.1))
    method.config = method.Config(target_rho=1.0, dual_lr=100.0, warmup_fraction=0.0, budget_anneal_until=0.0)
    model(**make_batch())
    method.extra_loss(model, StepInfo(1, 20, 0, 20))
    method.after_optimizer_step(model, StepInfo(1, 20, 0, 20))
    assert method.dual_lambda == 0.0


def test_budget_target_descends_cubically_from_the_end_of_warmup():
    method, model = build(total_steps=100, target_rho=0.2, warmup_fraction=0.1, budget_anneal_until=0.5)
    model.train()
    targets = {}
    for step in (10, 30, 50, 80):
        method.after_optimizer_step(model, StepInfo(step - 1, 100, 0, 100))
        model(**make_batch())
        method.extra_loss(model, StepInfo(step, 100, 0, 100))
        targets[step] = method._target_now
    start = method._rho_start
    assert start > 0.2
    assert targets[10] == pytest.approx(start)
    assert targets[30] == pytest.approx(0.2 + (start - 0.2) * 0.5**3)
    assert targets[50] == pytest.approx(0.2) and targets[80] == pytest.approx(0.2)


def test_budget_mode_track_lets_lambda_go_negative_below_target():
    method, model = build(
        total_steps=20, target_rho=1.0, dual_lr=1.0, warmup_fraction=0.0, budget_anneal_until=0.0, budget_mode="track"
    )
    model.train()
    model(**make_batch())
    method.extra_loss(model, StepInfo(0, 20, 0, 20))
    method.after_optimizer_step(model, StepInfo(0, 20, 0, 20))
    assert method.dual_lambda == pytest.approx(method._train_rho - 1.0) and method.dual_lambda < 0


def test_eval_stats_and_artifacts_follow_hard_decisions(tmp_path):
    method, model = build()
    force_routing(model, activity=1.0, rank=3)
    model.eval()
    method.start_eval_stats(model)
    with torch.no_grad():
        model(**make_batch())
        model(**make_batch(seed=1))
    stats = method.end_eval_stats(model)
    modules = 2 * BLOCKS
    assert stats["active_layers"] == modules and stats["total_rank"] == 3 * modules
    assert stats["active_blocks"] == BLOCKS and stats["block_rank"] == 3 * BLOCKS
    assert stats["routed_budget"] == pytest.approx(3 / 8) and stats["total_rank_std"] == 0.0
    assert set(stats) <= set(method.metrics)
    files = method.write_artifacts(model, tmp_path)
    assert {f.name for f in files} == {"routing_stats.json", "routing_heatmap.png"}
    saved = json.loads((tmp_path / "routing_stats.json").read_text())
    assert saved["examples"] == 8 and saved["histograms"]["total_rank"] == {str(3 * modules): 8}
    assert (tmp_path / "routing_heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_target_modules_accept_a_comma_separated_choice():
    config = get_method("radlora").Config(target_modules="query, key,value")
    assert config.target_modules == ["query", "key", "value"]
