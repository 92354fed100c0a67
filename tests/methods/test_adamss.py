"""AdaMSS + ASA (peft) wired into our loop: parameter formula, ASA target, tracking, aliases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from methods import BuildContext, StepInfo
from methods.adamss import (
    AdaMSS,
    active_subspaces,
    adamss_layers,
    adamss_params,
    adamss_params_from_clusters,
    effective_r,
    resolve_asa_schedule,
)
from orchestrator.tasks.models import load_model, resolve_model

ROOT = Path(__file__).resolve().parents[2]
M = 4  # random:bert-tiny: 2 layers x (query, value), each 32 x 32 with bias


def build(total_steps: int, **params):
    method = AdaMSS(AdaMSS.Config(**params))
    ctx = BuildContext(
        total_steps=total_steps, steps_per_epoch=total_steps, num_labels=2, target_modules=["query", "value"], seed=0
    )
    return method, method.build(load_model(resolve_model("random:bert-tiny"), num_labels=2, seed=0), ctx)


def train(method, model, steps: int, lr: float = 1e-2) -> None:
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(method.param_groups(model, 0.0), lr=lr)
    model.train()
    for step in range(steps):
        ids = torch.randint(1000, 1100, (8, 12), generator=generator)
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids[:, 0] % 2)
        out.loss.backward()
        optimizer.step()
        method.after_optimizer_step(model, StepInfo(step, steps, 0, steps))
        optimizer.zero_grad(set_to_none=True)


def test_roberta_base_qv_formula_gives_the_readme_42432():
    # 24 modules (q, v in 12 layers) of 768 x 768, R = 100, K = 10, r_i = 1
    assert adamss_params(d_out=768, r=100, num_subspaces=10, subspace_rank=1) == 768 + 1000
    assert 24 * adamss_params(d_out=768, r=100, num_subspaces=10, subspace_rank=1) == 42_432


def test_svd_rank_is_clamped_like_peft():
    assert effective_r(100, d_in=32, d_out=32) == 32
    assert effective_r(100, d_in=32, d_out=64) == 33  # d_in + bias column
    assert effective_r(16, d_in=768, d_out=768) == 16


def test_trainable_params_match_the_formula_on_a_tiny_model():
    method, model = build(10, r=16, K=4, ri=1)
    layers = adamss_layers(model)
    assert len(layers) == M
    for layer in layers.values():
        sizes = [p.shape[0] for p in layer.adamss_B["default"]]
        assert sum(sizes) == 32 and len(sizes) == 4  # clusters partition the 32 output rows
        assert sum(p.numel() for key in ("adamss_A", "adamss_B") for p in getattr(layer, key)["default"]) == (
            adamss_params(d_out=32, r=16, num_subspaces=4, subspace_rank=1)
        )
        assert tuple(layer.adamss_newB["default"].shape) == (16, 33)  # V^T on [x; 1]
    stats = method.stats(model)
    assert stats["trainable_params_peak"] == M * (32 + 4 * 16) == 384
    assert stats["projection_buffer_params"] == M * 16 * 33
    assert stats["adapter_memory_mb"] * 2**20 == pytest.approx((384 + M * 16 * 33) * 4)


def test_exact_formula_when_some_cluster_is_smaller_than_r_i():
    _method, model = build(10, r=16, K=8, ri=3)
    for layer in adamss_layers(model).values():
        sizes = [p.shape[0] for p in layer.adamss_B["default"]]
        ranks = [p.shape[0] for p in layer.adamss_A["default"]]
        assert ranks == [min(size, 3) for size in sizes]
        stored = sum(p.numel() for key in ("adamss_A", "adamss_B") for p in getattr(layer, key)["default"])
        assert stored == adamss_params_from_clusters(sizes, r=16, subspace_rank=3)


def test_asa_one_jump_ends_one_below_the_target_peft_off_by_one():
    # masks at t = 0 (n = all 16: nothing frozen) and t = 10 (n = target = 6): peft keeps
    # the scores strictly above the 6th largest, i.e. 5 subspaces
    method, model = build(12, r=16, K=4, use_asa=True, target_kk=6, init_warmup=0, final_warmup=10, mask_interval=10)
    train(method, model, 12)
    assert sum(active_subspaces(model).values()) == 6 - 1
    assert method.stats(model)["asa_target_subspaces"] == 6


def test_asa_gradual_schedule_reaches_the_target_exactly():
    # a mask at n = 7 keeps 6; the later masks at n = 6 find only 6 scored and freeze none
    method, model = build(40, r=16, K=4, use_asa=True, target_kk=6, init_warmup=2, final_warmup=30, mask_interval=5)
    train(method, model, 40)
    assert sum(active_subspaces(model).values()) == 6
    # frozen subspaces keep their trained (non-zero) B and get no gradient
    frozen = [p for layer in adamss_layers(model).values() for p in layer.adamss_B["default"] if not p.requires_grad]
    assert len(frozen) == 16 - 6 and all(p.grad is None for p in frozen)
    assert any(p.abs().sum() > 0 for p in frozen)


def test_trainable_params_tracked_over_time():
    method, model = build(40, r=16, K=4, use_asa=True, target_kk=6, init_warmup=2, final_warmup=30, mask_interval=5)
    train(method, model, 40)
    stats = method.stats(model)
    counts = method.tracker.counts
    assert len(counts) == 40 and counts[0] == 384
    assert stats["trainable_params_peak"] == 384
    assert (
        stats["trainable_params_final"]
        == counts[-1]
        == sum(
            p.numel()
            for layer in adamss_layers(model).values()
            for key in ("adamss_A", "adamss_B")
            for p in getattr(layer, key)["default"]
            if p.requires_grad
        )
    )
    assert stats["trainable_params_mean"] == pytest.approx(sum(counts) / 40)
    assert stats["trainable_params_final"] < stats["trainable_params_mean"] < stats["trainable_params_peak"]
    assert stats["adapter_params_stored"] == 384  # freezing is not pruning


def test_asa_target_fraction_is_global_over_all_subspaces():
    method, model = build(20, r=16, K=4, use_asa=True, asa_target_frac=0.25)
    assert model.peft_config["default"].asa_target_subspaces == 4  # 0.25 * 16 subspaces
    assert method.stats(model)["total_subspaces"] == 16


def test_seed_names_are_aliases():
    assert AdaMSS.Config(K=10, ri=2, target_kk=5, beta1=0.9) == AdaMSS.Config(
        num_subspaces=10, subspace_rank=2, asa_target_subspaces=5, asa_importance_beta=0.9
    )
    with pytest.raises(ValueError, match="either"):
        AdaMSS.Config(K=10, num_subspaces=5)


def test_schedule_fractions_and_rounding():
    config = AdaMSS.Config(use_asa=True, init_warmup_frac=0.05, final_warmup_frac=0.95, mask_interval_frac=0.1)
    schedule = resolve_asa_schedule(config, 200)
    assert (schedule.init_warmup, schedule.final_warmup, schedule.mask_interval) == (10, 180, 20)  # 190 -> 180
    default = resolve_asa_schedule(AdaMSS.Config(use_asa=True), 100)
    assert (default.init_warmup, default.final_warmup, default.mask_interval) == (5, 95, 5)
    assert resolve_asa_schedule(AdaMSS.Config(use_asa=True, final_warmup=500, mask_interval=7), 50).final_warmup == 49
    with pytest.raises(ValueError, match="empty"):
        resolve_asa_schedule(AdaMSS.Config(use_asa=True, init_warmup=5, final_warmup=8, mask_interval=10), 50)


def test_write_artifacts(tmp_path):
    method, model = build(40, r=16, K=4, use_asa=True, target_kk=6, init_warmup=2, final_warmup=30, mask_interval=5)
    train(method, model, 40)
    files = method.write_artifacts(model, tmp_path)
    record = json.loads(files[0].read_text())
    assert sum(m["active_subspaces"] for m in record["modules"].values()) == 6
    assert record["trainable_params_changes"][0] == [0, 384]
    assert files[1].read_bytes()[:4] == b"\x89PNG"
    assert set(method.stats(model)) <= set(AdaMSS.metrics)


def test_search_space_and_hypothesis_are_valid():
    from orchestrator.search.space import SpaceFile
    from orchestrator.spec.loader import load_hypothesis
    from orchestrator.spec.models import TRAINING_PARAMS

    space = SpaceFile(**yaml.safe_load((ROOT / "search_spaces" / "adamss.yaml").read_text()))
    assert set(space.params) <= set(AdaMSS.Config.model_fields) | set(TRAINING_PARAMS)
    paper = load_hypothesis(ROOT / "hypotheses" / "adamss_asa.yaml", "paper").hypothesis
    assert {"smoke", "paper", "paper-glue"} <= set(paper.profiles)
    assert paper.task.type == "image-classification"  # the README's ViT-B/16 on CIFAR-10
    glue = load_hypothesis(ROOT / "hypotheses" / "adamss_asa.yaml", "paper-glue").hypothesis
    assert "adamss.trainable_params in [42432, 42432]" in glue.expected  # the peft example's RoBERTa on CoLA


@pytest.mark.slow
def test_a_trial_through_the_engine_reports_asa_over_time(tmp_path):
    from orchestrator.spec.models import TaskSpec, TrainingSpec
    from orchestrator.tasks.prepare import prepare_task
    from orchestrator.trial.training import TrialSetup, run_trial

    task = TaskSpec(
        model="random:bert-tiny",
        dataset="synthetic:polarity",
        max_length=32,
        train_examples=320,
        val_examples=32,
        test_examples=32,
    )
    data = prepare_task(task, Path("."), tmp_path / "cache")
    fixed = {
        "r": 16,
        "K": 4,
        "use_asa": True,
        "asa_target_frac": 0.5,
        "final_warmup_frac": 0.8,
        "mask_interval_frac": 0.1,
    }
    setup = TrialSetup(
        arm="a",
        method="adamss",
        model="random:bert-tiny",
        metric="accuracy",
        training=TrainingSpec(epochs=2, batch_size=32),
        fixed=fixed,
    )
    final = run_trial(setup, {"lr": 1e-2}, 0, data, lambda metrics, artifacts: None, tmp_path)
    assert final["trainable_params"] == final["trainable_params_peak"] == M * (32 + 4 * 16)
    assert final["active_subspaces"] in (7, 8)  # target 8 of 16, or one below (peft's strict threshold)
    assert final["trainable_params_final"] < final["trainable_params_mean"] < final["trainable_params_peak"]
    # unmerged: the frozen V^T projection dominates, 2R(d_in + 1) + 2 sum_i r_i (R + |S_i|) per token
    per_module = 2 * 16 * 33 + 2 * (4 * 16 + 32)
    assert final["flops_ratio"] == pytest.approx(per_module / (2 * 8 * (32 + 32)))
