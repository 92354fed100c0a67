"""DoRA, PiSSA and LoRA-GA through peft's LoRA options: they build, keep the function at
step 0 where the method promises it, and train."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from methods import BuildContext, StepInfo, get_method
from orchestrator.tasks.models import load_model, resolve_model

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["query", "value"]
M, D = 4, 32  # random:bert-tiny: 4 adapted 32 x 32 modules


def make_batch(seed: int, labels: bool = True) -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, 1100, (8, 12), generator=torch.Generator().manual_seed(seed))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    if labels:
        batch["labels"] = ids[:, 0] % 2
    return batch


def context(with_calibration: bool = True) -> BuildContext:
    batches = [make_batch(seed) for seed in range(3)]
    return BuildContext(
        total_steps=4,
        steps_per_epoch=4,
        num_labels=2,
        target_modules=TARGETS,
        seed=0,
        calibration_batches=(lambda: iter(batches)) if with_calibration else None,
    )


def logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def train_steps(method, model, steps: int = 3) -> list[float]:
    optimizer = torch.optim.AdamW(method.param_groups(model, 0.0), lr=5e-3)
    model.train()
    losses = []
    for step in range(steps):
        out = model(**make_batch(10))  # the same batch: the loss must go down
        out.loss.backward()
        optimizer.step()
        method.after_optimizer_step(model, StepInfo(step, steps, 0, steps))
        optimizer.zero_grad()
        losses.append(out.loss.item())
    return losses


def build(name: str, base=None, ctx: BuildContext | None = None, **params):
    method = get_method(name).from_params(params)
    base = base if base is not None else load_model(resolve_model("random:bert-tiny"), num_labels=2, seed=0)
    return method, method.build(base, ctx or context())


def adapter_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)


@pytest.mark.parametrize("name", ["dora", "pissa", "lora_ga"])
def test_builds_trains_and_reports_declared_metrics(name):
    method, model = build(name, r=4)
    losses = train_steps(method, model)
    assert losses[-1] < losses[0]
    stats = method.stats(model)
    assert set(stats) <= set(get_method(name).metrics)
    assert stats["total_rank"] == 4 * M
    extra = M * D if name == "dora" else 0  # DoRA's magnitude vector
    assert stats["adapter_memory_mb"] * 2**20 == (M * 4 * (D + D) + extra) * 4
    assert stats["base_memory_mb"] > 3.5  # the float32 tiny BERT, embeddings included


def test_dora_adds_a_magnitude_vector_and_keeps_the_function_at_init():
    base = load_model(resolve_model("random:bert-tiny"), num_labels=2, seed=0)
    batch = make_batch(7)
    before = logits(base, batch)
    _method, model = build("dora", base=base, r=4)
    assert adapter_params(model) == M * (4 * (D + D) + D)  # r (d_in + d_out) + d_out per module
    layer = model.base_model.model.bert.encoder.layer[0].attention.self.query
    torch.testing.assert_close(layer.lora_magnitude_vector["default"].weight, layer.base_layer.weight.norm(dim=1))
    torch.testing.assert_close(logits(model, batch), before)


def test_pissa_moves_the_principal_part_into_the_adapter():
    base = load_model(resolve_model("random:bert-tiny"), num_labels=2, seed=0)
    original = base.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    batch = make_batch(7)
    before = logits(base, batch)
    _method, model = build("pissa", base=base, r=4, lora_alpha=4, niter=None)
    layer = model.base_model.model.bert.encoder.layer[0].attention.self.query
    delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight  # scale alpha / r = 1
    torch.testing.assert_close(layer.base_layer.weight + delta, original, atol=1e-5, rtol=1e-5)
    top = torch.linalg.svdvals(original)[:4]
    torch.testing.assert_close(torch.linalg.svdvals(delta)[:4], top, atol=1e-4, rtol=1e-4)  # principal part
    torch.testing.assert_close(logits(model, batch), before, atol=1e-5, rtol=1e-5)


def test_lora_ga_initialises_from_gradients_and_keeps_the_function():
    base = load_model(resolve_model("random:bert-tiny"), num_labels=2, seed=0)
    batch = make_batch(7)
    before = logits(base, batch)
    method, model = build("lora_ga", base=base, r=4, gradient_examples=16)
    assert method.stats(model)["gradient_examples_used"] == 16  # two batches of 8
    layer = model.base_model.model.bert.encoder.layer[0].attention.self.query
    assert layer.lora_B["default"].weight.abs().sum() > 0  # B != 0, unlike LoRA's init
    torch.testing.assert_close(logits(model, batch), before, atol=1e-5, rtol=1e-5)  # W0 - sBA + sBA


def test_lora_ga_needs_calibration_batches():
    with pytest.raises(ValueError, match="calibration"):
        build("lora_ga", ctx=context(with_calibration=False), r=4)


@pytest.mark.parametrize("name", ["dora", "pissa", "lora_ga"])
def test_search_space_names_real_fields(name):
    import yaml

    from orchestrator.search.space import SpaceFile
    from orchestrator.spec.models import TRAINING_PARAMS

    space = SpaceFile(**yaml.safe_load((ROOT / "search_spaces" / f"{name}.yaml").read_text()))
    assert space.method == name
    config_cls = get_method(name).Config
    assert set(space.params) <= set(config_cls.model_fields) | set(TRAINING_PARAMS)
    config_cls(**{k: v for k, v in space.defaults.items() if k not in TRAINING_PARAMS})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dora", "pissa", "lora_ga"])
def test_a_full_trial_through_the_engine(name, tmp_path):
    from orchestrator.spec.models import TaskSpec, TrainingSpec
    from orchestrator.tasks.prepare import prepare_task
    from orchestrator.trial.training import TrialSetup, run_trial

    task = TaskSpec(
        model="random:bert-tiny",
        dataset="synthetic:polarity",
        max_length=32,
        train_examples=96,
        val_examples=32,
        test_examples=32,
    )
    data = prepare_task(task, Path("."), tmp_path / "cache")
    setup = TrialSetup(
        arm="a",
        method=name,
        model="random:bert-tiny",
        metric="accuracy",
        training=TrainingSpec(epochs=2, batch_size=32),
        fixed={"r": 8},
    )
    final = run_trial(setup, {"lr": 1e-2}, 0, data, lambda metrics, artifacts: None, tmp_path)
    assert final["total_rank"] == 8 * M and final["base_memory_mb"] > 0 and final["adapter_memory_mb"] > 0
    if name == "dora":  # the weight norm is recomputed every call: more than LoRA's FLOPs
        assert final["flops_ratio"] > 1.0
    else:  # same shapes as LoRA r=8, the reference
        assert final["flops_ratio"] == 1.0
