"""DyLoRA: per-step rank sampling, nested ranks, evaluation at several ranks."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
import torch
from torch import nn

from methods import get_method
from methods._masked_lora import MaskedLoraLinear
from methods.base import BuildContext, StepInfo
from methods.dylora import DyLoraConfig, set_rank
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


def build(seed: int = 0, **params):
    method = get_method("dylora")(DyLoraConfig(**params))
    model = load_model(resolve_model("random:bert-tiny"), num_labels=2, seed=0)
    ctx = BuildContext(total_steps=100, steps_per_epoch=10, num_labels=2, target_modules=["query", "value"], seed=seed)
    return method, method.build(model, ctx)


def layers(model: nn.Module) -> list[MaskedLoraLinear]:
    return [m for m in model.modules() if isinstance(m, MaskedLoraLinear)]


def test_sampled_ranks_stay_within_bounds_and_cover_them():
    method, model = build(r_min=2, r_max=6)
    for step in range(300):
        method.after_optimizer_step(model, StepInfo(step, 300, 0, 300))
        assert len({layer.rank for layer in layers(model)}) == 1  # one b per step, all modules
    counts = Counter(method.rank_samples)
    assert set(counts) == {2, 3, 4, 5, 6}
    assert min(counts.values()) > 30  # roughly uniform over 301 draws


def test_rank_sampling_is_reproducible_from_the_seed():
    a, model_a = build(seed=3)
    b, model_b = build(seed=3)
    for step in range(20):
        a.after_optimizer_step(model_a, StepInfo(step, 20, 0, 20))
        b.after_optimizer_step(model_b, StepInfo(step, 20, 0, 20))
    assert a.rank_samples == b.rank_samples


def test_nested_ranks_rank_b_uses_only_the_first_b_components():
    layer = MaskedLoraLinear(nn.Linear(10, 7), 8, lora_alpha=16.0, scale_by="rank").eval()
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 10)
    for b in (1, 3, 8):
        layer.eval_rank = b
        expected = layer.base_layer(x) + (16.0 / b) * x @ layer.lora_A[:b].T @ layer.lora_B[:, :b].T
        torch.testing.assert_close(layer(x), expected)
    layer.eval_rank = 3
    out = layer(x)
    with torch.no_grad():  # changing components past b leaves the rank-b adapter untouched
        layer.lora_A[3:].normal_()
        layer.lora_B[:, 3:].normal_()
    torch.testing.assert_close(layer(x), out)


def test_a_training_step_at_rank_b_updates_only_the_first_b_components():
    _method, model = build(r_max=8)
    for layer in layers(model):
        with torch.no_grad():
            layer.lora_B.normal_()
        layer.rank = 3
    model.train()
    model(**tiny_batch()).loss.backward()
    for layer in layers(model):
        assert torch.count_nonzero(layer.lora_A.grad[:3]) > 0
        assert torch.count_nonzero(layer.lora_A.grad[3:]) == 0
        assert torch.count_nonzero(layer.lora_B.grad[:, 3:]) == 0


def test_frozen_mode_updates_only_component_b():
    method, model = build(r_max=8, frozen=True)
    while method.rank_samples[-1] < 3:  # draw until b >= 3 so that there is a frozen prefix
        method.after_optimizer_step(model, StepInfo(0, 100, 0, 10))
    b = method.rank_samples[-1]
    for layer in layers(model):
        with torch.no_grad():
            layer.lora_B.normal_()
    model.train()
    model(**tiny_batch()).loss.backward()
    for layer in layers(model):
        nonzero_rows = torch.nonzero(layer.lora_A.grad.abs().sum(dim=1)).flatten().tolist()
        assert nonzero_rows == [b - 1]


def test_eval_uses_eval_rank_and_flops_follow_it():
    method, model = build(r_max=8)
    model.eval()
    batch = tiny_batch()
    tokens = batch["input_ids"].numel()
    full = count_flops(model, batch)
    assert method.end_eval_stats(model) == {"eval_rank": 8.0}
    assert set_rank(model, 2) == 8
    assert full - count_flops(model, batch) == 4 * 2 * tokens * (8 - 2) * (32 + 32)
    assert method.stats(model)["eval_rank"] == 2
    assert method.stats(model)["trainable_params_final"] == 4 * 2 * (32 + 32)


def test_evaluate_at_ranks_renames_metrics_and_restores_the_rank():
    method, model = build(r_max=4, eval_ranks=[1, 2, 4, 8])
    seen = []

    def evaluate(m):
        seen.append(layers(m)[0].eval_rank)
        return {"val_accuracy": 0.5 + 0.1 * seen[-1]}

    results = method.evaluate_at_ranks(model, evaluate)
    assert seen == [1, 2, 4]  # 8 > r_max is skipped
    assert results == pytest.approx({"val_accuracy_r1": 0.6, "val_accuracy_r2": 0.7, "val_accuracy_r4": 0.9})
    assert layers(model)[0].eval_rank == 4
    assert set(results) <= set(method.metrics)


def test_scaling_is_alpha_over_the_sampled_rank():
    _method, model = build(r_max=8, lora_alpha=16)
    layer = layers(model)[0]
    layer.rank = 4
    assert layer.train().scaling == pytest.approx(4.0)
    layer.eval_rank = 8
    assert layer.eval().scaling == pytest.approx(2.0)


def test_effective_counts_are_the_eval_rank_and_the_rows_given_a_gradient():
    method, model = build(r_min=1, r_max=8, eval_rank=2)
    per_rank = sum(layer.in_features + layer.out_features for layer in layers(model))
    method.rank_samples = [3, 5, 1, 7]  # the last draw is for a step never taken
    stats = method.stats(model)
    assert stats["trainable_params_final"] == 2 * per_rank
    assert stats["trainable_params_peak"] == 5 * per_rank
    assert stats["trainable_params_mean"] == pytest.approx(3 * per_rank)
    frozen, frozen_model = build(r_min=1, r_max=8, frozen=True)
    frozen.rank_samples = [3, 5, 1, 7]
    assert (
        frozen.stats(frozen_model)["trainable_params_mean"]
        == frozen.stats(frozen_model)["trainable_params_peak"]
        == per_rank
    )


def test_config_checks_rank_bounds():
    with pytest.raises(ValueError, match="r_min"):
        DyLoraConfig(r_min=9, r_max=8)
    with pytest.raises(ValueError, match="eval_rank"):
        DyLoraConfig(r_max=4, eval_rank=8)


def test_the_engine_reports_every_eval_rank_after_training(tmp_path):
    """run_trial calls extra_evaluations: a search trial reports val_accuracy_r<b> for
    each eval rank up to r_max, a confirmation run test_accuracy_r<b>; at b = r_max it
    is the trial's own final evaluation."""
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
        arm="d",
        method="dylora",
        model="random:bert-tiny",
        metric="accuracy",
        training=TrainingSpec(epochs=1, batch_size=16),
        fixed={"r_max": 4, "eval_ranks": [1, 2, 4, 8]},
    )
    final = run_trial(setup, {}, 0, data, lambda metrics, artifacts: None, tmp_path / "search")
    assert {"val_accuracy_r1", "val_accuracy_r2", "val_accuracy_r4", "val_loss_r4"} <= set(final)
    assert "val_accuracy_r8" not in final
    assert final["val_accuracy_r4"] == pytest.approx(final["val_accuracy"])
    assert final["val_loss_r4"] == pytest.approx(final["val_loss"])
    confirm = run_trial(
        replace(setup, confirm=True, final_split="test"),
        {},
        1,
        data,
        lambda metrics, artifacts: None,
        tmp_path / "confirm",
    )
    assert {"test_accuracy_r1", "test_accuracy_r2", "test_accuracy_r4"} <= set(confirm)
