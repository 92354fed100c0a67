"""AdaLoRA (peft) wired into our loop: budget, regulariser, finalize, artifacts, shipped YAMLs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from methods import BuildContext, StepInfo, get_method
from methods.adalora import AdaLoRA, kept_ranks, orthogonal_regulariser, resolve_schedule
from orchestrator.tasks.models import load_model, resolve_model

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["query", "value"]
M = 4  # random:bert-tiny has 2 layers x (query, value)


def tiny_model():
    return load_model(resolve_model("random:bert-tiny"), num_labels=2, seed=0)


def context(total_steps: int) -> BuildContext:
    return BuildContext(
        total_steps=total_steps, steps_per_epoch=total_steps, num_labels=2, target_modules=TARGETS, seed=0
    )


def make_batch(generator: torch.Generator, labels: bool = True) -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, 1100, (8, 12), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    if labels:
        batch["labels"] = ids[:, 0] % 2
    return batch


def train(method, model, steps: int, lr: float = 1e-2) -> None:
    """The engine's loop, in miniature: forward, extra loss, backward, step, hook, zero_grad."""
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(method.param_groups(model, 0.0), lr=lr)
    model.train()
    for step in range(steps):
        info = StepInfo(step=step, total_steps=steps, epoch=0, steps_per_epoch=steps)
        out = model(**make_batch(generator))
        extra = method.extra_loss(model, info)
        (out.loss + (extra if extra is not None else 0)).backward()
        optimizer.step()
        method.after_optimizer_step(model, info)
        optimizer.zero_grad()


def build(steps: int, **params):
    method = AdaLoRA(AdaLoRA.Config(**params))
    return method, method.build(tiny_model(), context(steps))


def test_budget_shrinks_to_target_r_times_modules():
    method, model = build(30, init_r=6, target_r=2, tinit=3, tfinal=5, deltaT=2)
    assert sum(kept_ranks(model).values()) == 6 * M  # nothing pruned before training
    train(method, model, 30)
    ranks = kept_ranks(model)
    assert sum(ranks.values()) == 2 * M
    stats = method.stats(model)
    assert stats["total_rank"] == 8 and stats["init_rank_budget"] == 24 and stats["target_rank_budget"] == 8
    # pruned triplets really have E = 0 after the last step
    for name, layer in method_layers(model).items():
        assert int((layer.lora_E["default"] != 0).sum()) <= ranks[name]


def method_layers(model):
    from methods.adalora import adalora_layers

    return adalora_layers(model)


def test_tfinal_zero_still_reaches_the_target_budget():
    # peft finalises at step T - tfinal, which a 0-based loop never reaches when tfinal = 0
    method, model = build(12, init_r=4, target_r=1, tinit=0, tfinal=0, deltaT=1)
    assert method.schedule.tfinal == 1 and method.schedule.final_mask_step == 11
    train(method, model, 12)
    assert sum(kept_ranks(model).values()) == 1 * M


def test_fractions_win_over_step_counts_and_total_step_is_the_real_one():
    config = AdaLoRA.Config(tinit=1, tfinal=2, tinit_frac=0.1, tfinal_frac=0.4)
    schedule = resolve_schedule(config, 200)
    assert (schedule.total_step, schedule.tinit, schedule.tfinal) == (200, 20, 80)
    method, model = build(50, tinit_frac=0.1, tfinal_frac=0.4)
    peft_config = model.peft_config["default"]
    assert (peft_config.total_step, peft_config.tinit, peft_config.tfinal) == (50, 5, 20)


def test_schedule_is_clamped_to_what_peft_accepts():
    schedule = resolve_schedule(AdaLoRA.Config(tinit=50, tfinal=50), 20)
    assert schedule.tfinal == 19 and schedule.tinit == 0  # tinit < T - tfinal
    with pytest.raises(ValueError, match="at least 2"):
        resolve_schedule(AdaLoRA.Config(), 1)


def test_target_above_init_is_rejected():
    with pytest.raises(ValueError, match="target_r"):
        AdaLoRA.Config(init_r=4, target_r=8)


def test_orthogonal_regulariser_is_in_out_loss_exactly_once():
    method, model = build(10, init_r=4, target_r=2, orth_reg_weight=0.3)
    model.train()
    batch = make_batch(torch.Generator().manual_seed(1))
    out = model(**batch)
    task_loss = torch.nn.functional.cross_entropy(out.logits, batch["labels"])
    regulariser = orthogonal_regulariser(model)
    assert regulariser.item() > 0.1  # random N(0, 0.02) factors are far from orthogonal
    torch.testing.assert_close(out.loss - task_loss, 0.3 * regulariser)
    # peft added it, so the method adds nothing on top (never twice)
    assert method.extra_loss(model, StepInfo(0, 10, 0, 10)) is None
    # and the term has gradients reaching A and B
    out.loss.backward()
    layer = next(iter(method_layers(model).values()))
    assert layer.lora_A["default"].grad.abs().sum() > 0


def test_extra_loss_adds_the_regulariser_when_the_output_has_no_loss():
    method, model = build(10, init_r=4, target_r=2, orth_reg_weight=0.3)
    out = model(**make_batch(torch.Generator().manual_seed(1), labels=False))
    assert out.loss is None
    extra = method.extra_loss(model, StepInfo(0, 10, 0, 10))
    torch.testing.assert_close(extra, 0.3 * orthogonal_regulariser(model))


def test_finalize_slices_to_kept_ranks_and_keeps_outputs():
    method, model = build(20, init_r=6, target_r=2, tinit=2, tfinal=4, deltaT=2)
    train(method, model, 20)
    batch = make_batch(torch.Generator().manual_seed(5), labels=False)
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
    model = method.finalize(model)
    with torch.no_grad():
        after = model(**batch).logits
    torch.testing.assert_close(before, after)
    ranks = kept_ranks(model)
    stored = 0
    for name, layer in method_layers(model).items():
        assert layer.lora_E["default"].shape[0] == ranks[name]
        stored += sum(getattr(layer, key)["default"].numel() for key in ("lora_E", "lora_A", "lora_B"))
    stats = method.stats(model)
    assert stats["trainable_params_final"] == stored == sum(r * (32 + 32 + 1) for r in ranks.values())
    assert stats["trainable_params_mean"] == 6 * M * (32 + 32 + 1)  # masked triplets keep training
    assert stats["adapter_memory_mb"] * 1024 * 1024 == pytest.approx((stored + M) * 4)  # + one ranknum each


def test_write_artifacts_rank_pattern_and_heatmap(tmp_path):
    method, model = build(12, init_r=4, target_r=2, tinit=1, tfinal=3, deltaT=1)
    train(method, model, 12)
    files = method.write_artifacts(model, tmp_path)
    assert {f.name for f in files} == {"rank_pattern.json", "rank_heatmap.png"}
    record = json.loads((tmp_path / "rank_pattern.json").read_text())
    assert sum(record["ranks"].values()) == 2 * M
    assert record["schedule"]["final_mask_step"] == 9
    assert all(sum(mask) == record["ranks"][k.rsplit(".lora_E", 1)[0]] for k, mask in record["rank_pattern"].items())
    assert (tmp_path / "rank_heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_every_reported_metric_is_declared():
    method, model = build(10, init_r=4, target_r=2)
    assert set(method.stats(model)) <= set(AdaLoRA.metrics)


def _space_params_are_valid(space_file: Path, method_name: str) -> None:
    from orchestrator.space import SpaceFile
    from orchestrator.spec.models import TRAINING_PARAMS

    space = SpaceFile(**yaml.safe_load(space_file.read_text()))
    assert space.method == method_name
    fields = set(get_method(method_name).Config.model_fields)
    assert set(space.params) <= fields | set(TRAINING_PARAMS), set(space.params) - fields
    get_method(method_name).Config(**{k: v for k, v in space.defaults.items() if k not in TRAINING_PARAMS})


@pytest.mark.parametrize("name", ["adalora", "qlora_adalora"])
def test_search_space_names_real_fields(name):
    _space_params_are_valid(ROOT / "search_spaces" / f"{name}.yaml", name)


@pytest.mark.parametrize("profile", ["default", "smoke", "paper"])
def test_hypothesis_adalora_vs_lora_loads(profile):
    from orchestrator.spec.loader import load_hypothesis

    loaded = load_hypothesis(ROOT / "hypotheses" / "adalora_vs_lora.yaml", profile)
    assert [arm.method for arm in loaded.hypothesis.arms.values()] == ["adalora", "lora", "adalora", "lora"]
