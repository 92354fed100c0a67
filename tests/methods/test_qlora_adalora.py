"""QLoRA + AdaLoRA: a really 4-bit base (bitsandbytes on CPU), float head, AdaLoRA on top."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

bnb = pytest.importorskip("bitsandbytes")

from methods import BuildContext, StepInfo  # noqa: E402
from methods.adalora import kept_ranks  # noqa: E402
from methods.base import linear_shapes  # noqa: E402
from methods.qlora_adalora import QloraAdaLoRA  # noqa: E402
from orchestrator.measure.flops import count_flops  # noqa: E402
from orchestrator.tasks.models import load_model, resolve_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["query", "value"]


@pytest.fixture(scope="module")
def built():
    """One 4-bit model shared by the read-only tests (loading costs ~1 s)."""
    torch.set_num_threads(1)
    float_model = load_model(resolve_model("random:bert-tiny"), num_labels=2, seed=0)
    head = {k: v.clone() for k, v in float_model.classifier.state_dict().items()}
    method = QloraAdaLoRA(
        QloraAdaLoRA.Config(init_r=4, target_r=2, tinit_frac=0.125, tfinal_frac=0.25, deltaT_frac=0.01)
    )
    ctx = BuildContext(total_steps=8, steps_per_epoch=8, num_labels=2, target_modules=TARGETS, seed=0)
    float_flops = count_flops(float_model, _batch(torch.Generator().manual_seed(3), labels=False))
    model = method.build(float_model, ctx)
    return method, model, head, float_flops


def _batch(generator: torch.Generator, labels: bool = True) -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, 1100, (4, 10), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    if labels:
        batch["labels"] = ids[:, 0] % 2
    return batch


def test_encoder_linears_are_4bit_and_head_and_pooler_are_not(built):
    _, model, _, _ = built
    inner = model.base_model.model
    linears = {name: module for name, module in inner.named_modules() if isinstance(module, nn.Linear)}
    encoder = {name: module for name, module in linears.items() if ".encoder." in name}
    assert len(encoder) == 2 * 6  # q, k, v, attention out, FFN in, FFN out per layer
    for name, module in encoder.items():
        assert isinstance(module, bnb.nn.Linear4bit), name
        assert module.weight.dtype == torch.uint8
        assert module.weight.numel() == module.in_features * module.out_features // 2  # two weights per byte
    for name, module in linears.items():
        if "classifier" in name or "pooler" in name:
            assert not isinstance(module, bnb.nn.Linear4bit), name
            assert module.weight.dtype == torch.float32
    assert type(inner.bert.encoder.layer[0].attention.self.query).__name__ == "SVDLinear4bit"


def test_schedule_fractions_reach_peft_as_steps_of_the_real_run(built):
    method, model, _, _ = built
    peft_config = model.peft_config["default"]
    # 8 steps: tinit 0.125 -> 1, tfinal 0.25 -> 2, deltaT 0.01 -> at least 1 step
    assert (peft_config.total_step, peft_config.tinit, peft_config.tfinal, peft_config.deltaT) == (8, 1, 2, 1)
    assert method.schedule.mask_steps() == [2, 3, 4, 5, 6]


def test_head_starts_from_the_float_models_weights(built):
    _, model, head, _ = built
    trained_copy = model.base_model.model.classifier.modules_to_save["default"]
    for key, value in head.items():
        torch.testing.assert_close(trained_copy.state_dict()[key], value)
    assert all(p.requires_grad for p in trained_copy.parameters())


def nf4_double_quant_bytes(d_in: int, d_out: int) -> int:
    """What one NF4 linear layer with double quantisation holds: packed 4-bit weights,
    one uint8 absmax per 64-weight block, the 16-entry NF4 code book, the offset, one
    float32 absmax per 256 absmax values and the 256-entry code book of that second
    quantisation, plus the float32 bias."""
    n = d_in * d_out
    blocks = -(-n // 64)
    return n // 2 + blocks + 16 * 4 + 4 + 4 * -(-blocks // 256) + 256 * 4 + 4 * d_out


def test_base_memory_counts_4bit_weights_and_their_statistics(built):
    method, model, _, _ = built
    stats = method.stats(model)
    assert set(stats) <= set(QloraAdaLoRA.metrics)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    float_bytes = sum(4 * (m.in_features * m.out_features + m.out_features) for m in layers)
    quantised_bytes = sum(nf4_double_quant_bytes(m.in_features, m.out_features) for m in layers)
    # only the linear layers differ; the 30522 x 32 word embedding stays float32
    saved = (stats["base_float_memory_mb"] - stats["base_memory_mb"]) * 2**20
    assert saved == pytest.approx(float_bytes - quantised_bytes)
    assert stats["quantised_linear_compression"] == pytest.approx(float_bytes / quantised_bytes)
    assert stats["base_memory_compression"] == pytest.approx(stats["base_float_memory_mb"] / stats["base_memory_mb"])


def test_4bit_matmuls_are_counted_like_float_ones(built):
    method, model, _, float_flops = built
    batch = _batch(torch.Generator().manual_seed(3), labels=False)
    tokens = batch["input_ids"].numel()
    adapter = sum(2 * 4 * (d_in + d_out) for _, d_in, d_out in linear_shapes(model, TARGETS)) * tokens
    assert count_flops(model, batch, method.flop_formulas()) - float_flops == adapter


def test_trains_again_after_a_no_grad_evaluation():
    """bitsandbytes 0.50 repacks 4-bit weights for an inference-only CPU kernel on the
    first no-grad eval call and never unpacks them: the next epoch's training then
    fails. The method switches that repack off; an epoch boundary must just work."""

    torch.set_num_threads(1)
    method = QloraAdaLoRA(
        QloraAdaLoRA.Config(init_r=4, target_r=2, tinit_frac=0.125, tfinal_frac=0.25, deltaT_frac=0.01)
    )
    ctx = BuildContext(total_steps=8, steps_per_epoch=8, num_labels=2, target_modules=TARGETS, seed=0)
    model = method.build(load_model(resolve_model("random:bert-tiny"), num_labels=2, seed=0), ctx)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(method.param_groups(model, 0.0), lr=1e-2)
    frozen = {n: p.clone() for n, p in model.named_parameters() if p.dtype == torch.uint8}
    for step in range(8):
        if step == 4:  # end of "epoch 1": validation pass, as the engine runs it
            model.eval()
            with torch.no_grad():
                model(**_batch(generator))
        model.train()
        out = model(**_batch(generator))
        out.loss.backward()
        optimizer.step()
        method.after_optimizer_step(model, StepInfo(step, 8, step // 4, 4))
        optimizer.zero_grad()
    assert sum(kept_ranks(model).values()) == 2 * 4
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name])  # the 4-bit base never changes
    model = method.finalize(model)
    model.eval()
    with torch.no_grad():  # the no-grad CPU path that bitsandbytes repacks for
        logits = model(**_batch(generator, labels=False)).logits
    assert logits.shape == (4, 2) and torch.isfinite(logits).all()
    assert method.stats(model)["total_rank"] == 8


def test_search_space_and_hypothesis_are_valid():
    import yaml

    from orchestrator.search.space import SpaceFile
    from orchestrator.spec.loader import load_hypothesis
    from orchestrator.spec.models import TRAINING_PARAMS

    space = SpaceFile(**yaml.safe_load((ROOT / "search_spaces" / "qlora_adalora.yaml").read_text()))
    assert set(space.params) <= set(QloraAdaLoRA.Config.model_fields) | set(TRAINING_PARAMS)
    for profile in ("default", "smoke", "paper"):
        loaded = load_hypothesis(ROOT / "hypotheses" / "qlora_adalora.yaml", profile)
        assert next(iter(loaded.hypothesis.arms)) == "qlora_adalora"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qlora_adalora", "adalora"])
def test_a_two_epoch_trial_through_the_engine(name, tmp_path):
    """Epoch 2 trains after epoch 1's validation pass (the bitsandbytes repack trap);
    after finalize the kept ranks are 8 per module on average, so the adapter costs
    exactly LoRA-r8's FLOPs, 4-bit matmuls counted like float ones."""
    from orchestrator.spec.models import TaskSpec, TrainingSpec
    from orchestrator.tasks.prepare import prepare_task
    from orchestrator.trial.training import TrialSetup, run_trial

    task = TaskSpec(
        model="random:bert-tiny",
        dataset="synthetic:polarity",
        max_length=32,
        train_examples=128,
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
        fixed={"init_r": 12, "target_r": 8, "tfinal_frac": 0.25},
    )
    final = run_trial(setup, {"lr": 1e-2}, 0, data, lambda metrics, artifacts: None, tmp_path)
    assert final["epoch"] == 2 and final["total_rank"] == 8 * 4
    assert final["flops_ratio"] == pytest.approx(1.0)
    assert final["trainable_params"] == 4 * 12 * (32 + 32 + 1)  # peak: init_r triplets
    assert (tmp_path / "artifacts" / "rank_pattern.json").exists()
