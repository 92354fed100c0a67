"""Plateau-triggered LoRA rank growth, and the pre-allocated masked LoRA layer under it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from methods import get_method
from methods._masked_lora import MaskedLoraLinear
from methods.base import BuildContext, StepInfo
from methods.plateau_lora import PlateauLoraConfig, PlateauRule
from orchestrator.tasks.models import load_model, resolve_model

torch.set_num_threads(1)


def tiny_model(seed: int = 0) -> nn.Module:
    return load_model(resolve_model("random:bert-tiny"), num_labels=2, seed=seed)


def tiny_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (4, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "labels": torch.tensor([0, 1, 1, 0]),
    }


def context(total_steps: int = 100) -> BuildContext:
    return BuildContext(
        total_steps=total_steps, steps_per_epoch=10, num_labels=2, target_modules=["query", "value"], seed=0
    )


def lora_layers(model: nn.Module) -> list[MaskedLoraLinear]:
    return [m for m in model.modules() if isinstance(m, MaskedLoraLinear)]


# -- the shared masked layer -------------------------------------------------------------
def test_masked_layer_at_rank_k_matches_plain_peft_lora_outputs_and_gradients():
    from peft import LoraConfig
    from peft.tuners.lora.layer import Linear as PeftLoraLinear

    torch.manual_seed(0)
    k, r_max, alpha = 3, 8, 16.0
    masked = MaskedLoraLinear(nn.Linear(12, 10), r_max, rank=k, lora_alpha=alpha, scale_by="r_max")
    with torch.no_grad():
        masked.lora_B.normal_()  # non-zero B so that A's gradient is non-trivial
    # A plain rank-k LoRA with the same factors and the same effective scaling.
    base = nn.Linear(12, 10)
    base.load_state_dict(masked.base_layer.state_dict())
    scaling = alpha / r_max
    plain = PeftLoraLinear(base, "default", LoraConfig(r=k, lora_alpha=scaling * k), r=k, lora_alpha=scaling * k)
    with torch.no_grad():
        plain.lora_A["default"].weight.copy_(masked.lora_A[:k])
        plain.lora_B["default"].weight.copy_(masked.lora_B[:, :k])

    x = torch.randn(5, 12)
    out_masked, out_plain = masked(x), plain(x)
    torch.testing.assert_close(out_masked, out_plain)
    out_masked.square().sum().backward()
    out_plain.square().sum().backward()
    torch.testing.assert_close(masked.lora_A.grad[:k], plain.lora_A["default"].weight.grad)
    torch.testing.assert_close(masked.lora_B.grad[:, :k], plain.lora_B["default"].weight.grad)
    assert torch.count_nonzero(masked.lora_A.grad[k:]) == 0
    assert torch.count_nonzero(masked.lora_B.grad[:, k:]) == 0


def test_inactive_rows_stay_zero_and_undecayed_under_adamw_with_weight_decay():
    layer = MaskedLoraLinear(nn.Linear(8, 8), 6, rank=2, init_rows=2)
    layer.base_layer.requires_grad_(False)
    optimizer = torch.optim.AdamW([layer.lora_A, layer.lora_B], lr=0.1, weight_decay=0.5)
    active_before = layer.lora_A[:2].detach().clone()
    for _ in range(3):
        layer(torch.randn(4, 8)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert torch.count_nonzero(layer.lora_A[2:]) == 0
    assert torch.count_nonzero(layer.lora_B[:, 2:]) == 0
    assert not torch.equal(layer.lora_A[:2], active_before)  # active rows did train (and decay)


def test_masked_layer_flops_follow_the_active_rank():
    from torch.utils.flop_counter import FlopCounterMode

    layer = MaskedLoraLinear(nn.Linear(16, 24), 8, rank=3).eval()
    x = torch.randn(5, 16)
    with FlopCounterMode(display=False) as counter:
        layer(x)
    base = 2 * 5 * 16 * 24
    assert counter.get_total_flops() - base == 2 * 5 * 3 * (16 + 24)


# -- the plateau rule --------------------------------------------------------------------
def test_rule_fires_after_patience_non_improving_evaluations():
    rule = PlateauRule(patience=2, min_delta=0.01)
    decisions = [rule.update(x) for x in (1.0, 0.995, 0.99)]
    assert decisions == [False, False, True]


def test_rule_cooldown_ignores_evaluations_after_growth():
    rule = PlateauRule(patience=1, cooldown=2)
    assert [rule.update(x) for x in (1.0, 1.0)] == [False, True]
    rule.grew()
    assert [rule.update(x) for x in (1.0, 1.0, 1.0)] == [False, False, True]


def test_rule_ema_smooths_a_single_spike():
    raw, smooth = PlateauRule(patience=1), PlateauRule(patience=1, ema=0.5)
    losses = (1.0, 0.8, 0.85, 0.6)
    assert [raw.update(x) for x in losses] == [False, False, True, False]
    # smoothed: 1.0, 0.9, 0.875, 0.7375 -> always improving
    assert [smooth.update(x) for x in losses] == [False, False, False, False]


# -- the method ----------------------------------------------------------------------------
def build(**params) -> tuple[object, nn.Module]:
    method = get_method("plateau_lora")(PlateauLoraConfig(**params))
    return method, method.build(tiny_model(), context())


def test_growth_follows_scripted_validation_losses_and_stops_at_r_max():
    method, model = build(r0=2, delta_r=3, r_max=8, patience=2, min_delta=0.01, cooldown=1)
    losses = [1.0, 0.9, 0.895, 0.9, 0.9, 0.85, 0.95, 0.94, 0.96, 0.96, 0.97, 0.97]
    # 1.0 best; 0.9 improves; 0.895 (< 0.01 better) bad 1; 0.9 bad 2 -> grow to 5; 0.9 cooldown;
    # 0.85 improves; 0.95 bad 1; 0.94 bad 2 -> grow to 8; cooldown; then plateaus at the cap.
    ranks = []
    for i, loss in enumerate(losses):
        ranks.append(method.after_evaluation(model, StepInfo(10 * (i + 1), 1000, i, 10), loss)["rank"])
    assert ranks == [2, 2, 2, 5, 5, 5, 5, 8, 8, 8, 8, 8]
    assert method.trajectory.growth_steps == [40, 80]
    assert all(layer.rank == 8 for layer in lora_layers(model))
    assert method.stats(model)["rank_final"] == 8


def test_growth_leaves_the_function_unchanged():
    method, model = build(r0=2, delta_r=2, r_max=8)
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_B[:, :2].normal_()  # a trained-looking adapter
    model.eval()
    batch = tiny_batch()
    with torch.no_grad():
        before = model(**batch).logits
    method.grow(model, 4)
    with torch.no_grad():
        after = model(**batch).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)  # same function; matmul rounding only
    layer = lora_layers(model)[0]
    assert layer.rank == 4 and torch.count_nonzero(layer.lora_A[2:4]) == layer.lora_A[2:4].numel()
    assert torch.count_nonzero(layer.lora_B[:, 2:4]) == 0


def test_no_growth_after_the_last_optimizer_step():
    method, model = build(r0=2, patience=1)
    method.after_evaluation(model, StepInfo(50, 100, 0, 50), 1.0)
    assert method.after_evaluation(model, StepInfo(100, 100, 1, 50), 1.0)["rank"] == 2


def test_scaling_is_fixed_while_the_rank_grows():
    method, model = build(r0=2, r_max=8, lora_alpha=16, scaling="sqrt_r_max")
    layer = lora_layers(model)[0]
    before = layer.scaling
    method.grow(model, 6)
    assert layer.scaling == before == pytest.approx(16 / 8**0.5)


def stats_after_steps_at(ranks: list[int]) -> tuple[dict[str, float], int]:
    """A plateau model taking one optimizer step at each rank in turn (growing to it
    first): its stats and the parameters of one rank."""
    method, model = build(r0=ranks[0], delta_r=2, r_max=8)
    per_rank = sum(layer.in_features + layer.out_features for layer in lora_layers(model))
    for step, rank in enumerate(ranks):
        if rank != method.rank:
            method.grow(model, rank)
        method.after_optimizer_step(model, StepInfo(step, 100, 0, 10))
    return method.stats(model), per_rank


def test_trainable_params_mean_is_step_weighted():
    stats, per_rank = stats_after_steps_at([2, 2, 2, 4])
    assert stats["trainable_params_final"] == 4 * per_rank
    assert stats["trainable_params_mean"] == pytest.approx((3 * 2 + 4) / 4 * per_rank)


def test_effective_counts_follow_the_active_rows_not_the_preallocated_ones():
    stats, per_rank = stats_after_steps_at([2, 2, 6])
    assert stats["trainable_params_peak"] == 6 * per_rank
    assert stats["mean_train_rank"] == pytest.approx((2 + 2 + 6) / 3)


def test_the_engine_reports_active_rows_as_the_effective_count_before_any_growth(tmp_path):
    """One epoch: the first evaluation only sets the best loss, so the model never grows.
    The counts claims read, the engine's trainable_params included, are the r0 active
    rows' parameters, computed here from the base model's query/value shapes, not the
    r_max rows the optimizer holds."""
    from orchestrator.spec.models import TaskSpec, TrainingSpec
    from orchestrator.tasks.prepare import prepare_task
    from orchestrator.trial.training import TrialSetup, run_trial

    data = prepare_task(
        TaskSpec(
            model="random:bert-tiny",
            dataset="synthetic:polarity",
            train_examples=64,
            val_examples=32,
            test_examples=32,
        ),
        tmp_path,
        tmp_path / "cache",
    )
    setup = TrialSetup(
        arm="p",
        method="plateau_lora",
        model="random:bert-tiny",
        metric="accuracy",
        training=TrainingSpec(epochs=1, batch_size=16),
        fixed={"r0": 2, "r_max": 8, "patience": 1},
    )
    final = run_trial(setup, {}, 0, data, lambda metrics, artifacts: None, tmp_path / "search")
    per_rank = sum(
        module.in_features + module.out_features
        for name, module in tiny_model().named_modules()
        if isinstance(module, nn.Linear) and name.endswith(("query", "value"))
    )
    assert final["growths"] == 0 and final["rank_final"] == 2
    for name in ("trainable_params_peak", "trainable_params_final", "trainable_params_mean"):
        assert final[name] == 2 * per_rank, name
    assert final["mean_train_rank"] == 2
    assert final["trainable_params"] == 2 * per_rank < 8 * per_rank  # the default metric is the honest one


def test_only_adapters_and_head_are_trainable():
    _, model = build()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("classifier.") for n in trainable)
    assert {"classifier.weight", "classifier.bias"} <= trainable


def test_config_rejects_r0_above_r_max():
    with pytest.raises(ValueError, match="r0"):
        PlateauLoraConfig(r0=16, r_max=8)


def test_rank_trajectory_artifact_is_a_png(tmp_path):
    method, model = build(r0=2, patience=1)
    method.after_evaluation(model, StepInfo(10, 100, 0, 10), 1.0)
    method.after_evaluation(model, StepInfo(20, 100, 1, 10), 1.0)
    paths = method.write_artifacts(model, tmp_path)
    assert [p.name for p in paths] == ["rank_trajectory.png"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
