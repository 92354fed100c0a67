"""SNELL: the distance kernel, competition-based sparsification, merge, FLOPs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from methods import get_method
from methods.base import BuildContext
from methods.snell import SnellConfig
from methods.snell.layer import SnellLinear, competition_sparsify, zeroed_count
from orchestrator.measure.flops import count_flops
from orchestrator.tasks.models import load_model, resolve_model

torch.set_num_threads(1)
QUANTILE_LIMIT = 16_777_216  # torch.quantile refuses inputs larger than this


def tiny_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (3, 9), generator=g)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "labels": torch.tensor([0, 1, 1]),
    }


def tiny_model() -> nn.Module:
    return load_model(resolve_model("random:bert-tiny"), num_labels=2, seed=0)


def build(**params):
    method = get_method("snell")(SnellConfig(**params))
    ctx = BuildContext(total_steps=100, steps_per_epoch=10, num_labels=2, target_modules=["query", "value"], seed=0)
    return method, method.build(tiny_model(), ctx)


def snell_layers(model: nn.Module) -> list[SnellLinear]:
    return [m for m in model.modules() if isinstance(m, SnellLinear)]


# -- sparsification ----------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.7, 0.9, 0.995])
def test_sparsify_zeroes_exactly_the_requested_fraction(sparsity):
    delta = torch.randn(96, 80)
    sparse = competition_sparsify(delta, sparsity)
    k = zeroed_count(delta.numel(), sparsity)
    assert k == round(sparsity * delta.numel())
    assert int((sparse == 0).sum()) == k
    kept = sparse != 0  # the survivors are the largest magnitudes, scaled by their own magnitude
    assert delta.abs()[kept].min() > delta.abs()[~kept].max()
    torch.testing.assert_close(sparse[kept], (delta * delta.abs())[kept])


def test_sparsity_zero_is_the_plain_kernel():
    delta = torch.randn(5, 7)
    assert torch.equal(competition_sparsify(delta, 0.0), delta)


def test_sparsify_gradient_is_the_magnitude_on_survivors_and_zero_elsewhere():
    delta = torch.randn(20, 30, requires_grad=True)
    sparse = competition_sparsify(delta, 0.5)
    sparse.sum().backward()
    kept = sparse.detach() != 0
    torch.testing.assert_close(delta.grad[kept], delta.detach().abs()[kept])
    assert torch.count_nonzero(delta.grad[~kept]) == 0


def test_sparsify_works_above_the_quantile_size_limit():
    # 16,785,409 distinct magnitudes (float64: float32 repeats values past 2**24, and
    # tied magnitudes are zeroed together, which would make the count inexact).
    n = 4097 * 4097
    delta = (torch.randperm(n, dtype=torch.float64) + 1).reshape(4097, 4097)
    assert delta.numel() > QUANTILE_LIMIT
    with pytest.raises(RuntimeError, match="too large"):
        torch.quantile(delta.flatten()[: QUANTILE_LIMIT + 1], 0.5)
    sparse = competition_sparsify(delta, 0.9)
    assert int((sparse == 0).sum()) == round(0.9 * n)


def test_sparsify_zeroes_ties_with_the_threshold_together():
    delta = torch.tensor([1.0, 2.0, 2.0, 2.0, 3.0])
    sparse = competition_sparsify(delta, 0.4)  # k = 2: tau = 2, and every 2 goes
    assert sparse.tolist() == [0.0, 0.0, 0.0, 0.0, 9.0]


# -- the kernel and the layer -----------------------------------------------------------
def test_distance_kernel_matches_its_definition():
    layer = SnellLinear(nn.Linear(5, 4), low_rank_dim=6, num_heads=2, coeff=0.1)
    expected = torch.zeros(5, 4)  # dW^T[i, j] = sum_h c_h || In_Q[h, i] - Out_Q[h, j] ||
    for h in range(2):
        for i in range(5):
            for j in range(4):
                expected[i, j] += 0.1 * (-1) ** h * torch.linalg.vector_norm(layer.in_q[h, i] - layer.out_q[h, j])
    torch.testing.assert_close(layer.dense_update(), expected.T, rtol=1e-4, atol=1e-6)


def test_distance_kernel_exceeds_the_rank_of_its_tables():
    layer = SnellLinear(nn.Linear(64, 64), low_rank_dim=4, sparsity=0.0)
    assert torch.linalg.matrix_rank(layer.dense_update().double(), rtol=1e-6) > 4


def test_parameters_match_lora_of_the_same_rank():
    for kernel in ("snell", "lora"):
        _, model = build(low_rank_dim=8, kernel=kernel)
        trainable = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n)
        assert trainable == 4 * 8 * (32 + 32)


def test_fold_starts_at_the_base_function_and_none_does_not():
    batch = tiny_batch()
    base = tiny_model().eval()
    with torch.no_grad():
        reference = base(**batch).logits
    for offset, matches in (("fold", True), ("none", False)):
        _, model = build(sparsity=0.0, init_offset=offset)
        with torch.no_grad():
            logits = model.eval()(**batch).logits
        assert torch.allclose(logits, reference, atol=1e-6) is matches


def test_lora_kernel_without_sparsity_starts_at_zero_and_with_sparsity_learns():
    plain = SnellLinear(nn.Linear(6, 6), 4, kernel="lora", sparsity=0.0)
    assert torch.count_nonzero(plain.dense_update()) == 0
    sparse = SnellLinear(nn.Linear(6, 6), 4, kernel="lora", sparsity=0.5)
    sparse(torch.randn(3, 6)).sum().backward()
    assert torch.count_nonzero(sparse.lora_A.grad) > 0 and torch.count_nonzero(sparse.lora_B.grad) > 0


# -- the density of the update -----------------------------------------------------------
def adapted_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights of the adapted linear layers (query, value), by module name, as copies."""
    return {
        name: module.weight.detach().clone()
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.endswith(("query", "value"))
    }


def train_a_few_steps(method, model, steps: int = 5) -> None:
    optimizer = torch.optim.AdamW(method.param_groups(model, 0.0), lr=1e-2)
    batch = tiny_batch()
    for _ in range(steps):
        model.train()(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("init_offset", ["fold", "none"])
def test_update_density_is_the_density_of_the_real_weight_change(init_offset):
    """The density claims read is that of W_final - W_pretrained, measured here on the
    merged model against the weights it was built from; under fold that is
    dW_s(T) - dW_s(0), not the 1 - sparsity of dW_s(T) alone."""
    method = get_method("snell")(SnellConfig(sparsity=0.5, init_offset=init_offset))
    ctx = BuildContext(total_steps=5, steps_per_epoch=5, num_labels=2, target_modules=["query", "value"], seed=0)
    model = tiny_model()
    pretrained = adapted_weights(model)
    model = method.build(model, ctx)
    train_a_few_steps(method, model)
    reported = method.stats(model)["update_density"]
    model = method.finalize(model)  # merge: the weights now hold the real change
    final = adapted_weights(model)
    assert final.keys() == pretrained.keys() and len(final) == 4
    changed = sum(int(torch.count_nonzero(final[name] - pretrained[name])) for name in final)
    total = sum(weight.numel() for weight in final.values())
    assert reported == method.stats(model)["update_density"] == pytest.approx(changed / total, abs=0.5 / total)
    if init_offset == "fold":
        assert reported > 0.55  # the step-0 and final supports together (0.61 after 5 steps, 0.73 after 30)
    else:
        assert reported == pytest.approx(0.5, abs=1e-3)  # one competition mask


def test_update_density_of_an_untrained_folded_layer_is_zero():
    layer = SnellLinear(nn.Linear(16, 12), 4, sparsity=0.5)
    layer.fold_initial_update()
    assert torch.count_nonzero(layer.weight_change()) == 0
    assert torch.count_nonzero(layer.sparse_update()) == 16 * 12 // 2


# -- merge and FLOPs -----------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["snell", "lora"])
def test_merged_forward_equals_unmerged_forward(kernel):
    method, model = build(kernel=kernel, sparsity=0.5)
    with torch.no_grad():  # move away from the init so the update is not negligible
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(20)
    batch = tiny_batch()
    model.eval()
    with torch.no_grad():
        unmerged = model(**batch).logits
    density = method.stats(model)["update_density"]
    model = method.finalize(model)
    assert not snell_layers(model)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, unmerged, rtol=1e-5, atol=1e-5)
    # scaling the tables scales dW uniformly, so the mask has not moved: the change
    # dW_s(T) - dW_s(0) has exactly dW_s's support
    assert method.stats(model)["update_density"] == density == pytest.approx(0.5)
    assert method.stats(model)["merged_modules"] == 4


def test_unmerged_flops_count_the_dense_branch_and_cdist_merged_costs_nothing():
    method, model = build(low_rank_dim=8, num_heads=2, merge=True)
    batch = tiny_batch()
    formulas = method.flop_formulas()
    base_flops = count_flops(tiny_model(), batch, formulas)
    tokens, d, heads, width = batch["input_ids"].numel(), 32, 2, 4
    dense = 2 * tokens * d * d  # F.linear with the dense d_out x d_in update
    cdist = 2 * heads * d * d * (width + 2)  # declared formula for aten._euclidean_dist
    assert count_flops(model, batch, formulas) - base_flops == 4 * (dense + cdist)
    model = method.finalize(model)
    assert count_flops(model, batch, formulas) == base_flops


def test_cdist_costs_nothing_to_a_counter_without_the_declared_formulas():
    """Why SNELL declares them: FlopCounterMode alone misses the kernel, and nothing is
    registered globally that another count could pick up."""
    method, model = build(low_rank_dim=8, num_heads=2, merge=True)
    batch = tiny_batch()
    cdist = 2 * 2 * 32 * 32 * (4 + 2)
    missed = count_flops(model, batch, method.flop_formulas()) - count_flops(model, batch)
    assert missed == 4 * cdist


def test_cdist_flops_are_counted_on_both_kernels_paths():
    from methods.flop_count import count_call_flops

    formulas = get_method("snell")().flop_formulas()
    # cdist takes the matmul path (aten._euclidean_dist) when either side has more than
    # 25 rows, and the direct one (aten._cdist_forward) otherwise.
    for rows, cols, expected in ((40, 30, 2 * 2 * 40 * 30 * (3 + 2)), (10, 20, 3 * 2 * 10 * 20 * 3)):
        x1, x2 = torch.randn(2, rows, 3), torch.randn(2, cols, 3)
        assert count_call_flops(lambda x1=x1, x2=x2: torch.cdist(x1, x2), formulas) == expected


@pytest.mark.slow
def test_a_few_steps_of_training_lower_the_loss():
    method, model = build(sparsity=0.5)
    optimizer = torch.optim.AdamW(method.param_groups(model, 0.0), lr=3e-3)
    batch = tiny_batch()
    losses = []
    for _ in range(15):
        loss = model.train()(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
