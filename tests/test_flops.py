"""FLOP measurement: LoRA counts exactly 2 r (d_in + d_out) per token per module."""

from __future__ import annotations

import pytest
import torch

from methods import BuildContext, get_method
from methods.base import linear_shapes
from methods.flop_count import token_affine_flops
from orchestrator.measure import flops
from orchestrator.tasks.types.sequence_classification import non_pad_tokens, unpadded_examples


def probe_batch(n: int = 4, length: int = 12):
    torch.manual_seed(0)
    ids = torch.randint(1000, 2000, (n, length))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # one padded example: padding must not count
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def ctx(modules=("query", "value")) -> BuildContext:
    return BuildContext(total_steps=10, steps_per_epoch=10, num_labels=2, target_modules=list(modules), seed=0)


@pytest.mark.parametrize(
    "rank, modules", [(8, ("query", "value")), (4, ("query", "key", "value", "intermediate.dense"))]
)
def test_lora_adapter_flops_per_token_are_exactly_2r_din_dout(tiny_model, rank, modules):
    batch = probe_batch()
    examples = unpadded_examples(batch)
    tokens = non_pad_tokens(batch)
    base = flops.count_flops_unpadded(tiny_model, examples)
    shapes = linear_shapes(tiny_model, list(modules))
    model = (
        get_method("lora").from_params({"r": rank, "target_modules": list(modules)}).build(tiny_model, ctx(modules))
    )
    adapted = flops.count_flops_unpadded(model, examples)
    expected = sum(2 * rank * (d_in + d_out) for _, d_in, d_out in shapes)
    assert flops.adapter_flops_per_unit(base, adapted, tokens) == expected


def test_reference_is_unmerged_lora_r8_on_the_same_modules(tiny_model):
    shapes = linear_shapes(tiny_model, ["query", "value"])
    assert len(shapes) == 4  # 2 layers x (query, value)
    assert flops.reference_lora_flops_per_token(tiny_model, ["query", "value"]) == sum(
        16 * (i + o) for _, i, o in shapes
    )


def test_merged_lora_costs_zero_adapter_flops(tiny_model):
    batch = probe_batch()
    examples = unpadded_examples(batch)
    base = flops.count_flops_unpadded(tiny_model, examples)
    model = get_method("lora").from_params({"r": 8}).build(tiny_model, ctx())
    merged = model.merge_and_unload()
    assert flops.adapter_flops_per_unit(base, flops.count_flops_unpadded(merged, examples), 10) == 0


def test_padding_does_not_inflate_the_count(tiny_model):
    batch = probe_batch()
    padded_total = flops.count_flops(tiny_model, batch)
    unpadded_total = flops.count_flops_unpadded(tiny_model, unpadded_examples(batch))
    assert unpadded_total < padded_total


# -- routed methods: FLOPs over the whole evaluated split ----------------------------------
ROUTED = [("radlora", {"generator": "static"}), ("radlora", {"generator": "hyper"}), ("cogalora", {})]


def routed_examples(count: int = 24, seed: int = 0):
    """Unpadded examples of 2..21 tokens (the whole 'split' of these tests)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 22, (count,), generator=gen).tolist()
    return [
        {
            "input_ids": torch.randint(1000, 5000, (1, n), generator=gen),
            "attention_mask": torch.ones(1, n, dtype=torch.long),
            "token_type_ids": torch.zeros(1, n, dtype=torch.long),
        }
        for n in lengths
    ]


def randomize_routed(model, method: str, scale: float = 2.0, seed: int = 1) -> None:
    """Random factors and routers: decisions (gate, rank) then vary from example to example."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if method in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


@pytest.mark.parametrize("name, params", ROUTED, ids=["radlora-static", "radlora-hyper", "cogalora"])
def test_routed_whole_split_count_equals_flop_counter_on_the_same_examples(tiny_model, name, params):
    examples = routed_examples()
    tokens = sum(int(e["attention_mask"].sum()) for e in examples)
    base = flops.count_flops_unpadded(tiny_model, examples)
    method = get_method(name).from_params(params)
    model = method.build(tiny_model, ctx())
    randomize_routed(model, name)
    method.start_eval_stats(model)  # the counted pass is the recorded pass
    adapted = flops.count_flops_unpadded(model, examples)
    stats = method.end_eval_stats(model)
    assert 0 < stats["active_fraction"] < 1  # gates differ between examples
    if name == "radlora":
        assert stats["total_rank_std"] > 0
    assert stats["flops_examples"] == len(examples)
    assert stats["adapter_flops_per_token"] == flops.adapter_flops_per_unit(base, adapted, tokens)


def test_a_path_whose_flops_are_not_affine_in_the_tokens_is_refused():
    def quadratic(tokens: int) -> None:
        x = torch.zeros(tokens, tokens)
        x @ x

    with pytest.raises(ValueError, match="not affine"):
        token_affine_flops(quadratic)
    linear = token_affine_flops(lambda t: torch.zeros(t, 4) @ torch.zeros(4, 3), check_at=9)
    assert (linear.per_example, linear.per_token) == (0, 24)


@pytest.fixture(scope="module")
def polarity(tmp_path_factory):
    from pathlib import Path

    from orchestrator.spec.models import TaskSpec
    from orchestrator.tasks.prepare import prepare_task

    task = TaskSpec(
        model="random:bert-tiny",
        dataset="synthetic:polarity",
        max_length=32,
        train_examples=64,
        val_examples=64,
        test_examples=48,
    )
    return prepare_task(task, Path("."), tmp_path_factory.mktemp("cache"))


def test_a_routed_trial_reports_flops_over_the_whole_final_split_not_the_probe(polarity, tmp_path, monkeypatch):
    from methods.radlora import RadLoRA
    from orchestrator.spec.models import TrainingSpec
    from orchestrator.tasks.models import default_target_modules, load_model, resolve_model
    from orchestrator.trial.training import PROBE_EXAMPLES, TrialSetup, run_trial

    final_models = []

    def finalize_with_varied_routing(self, model):
        randomize_routed(model, "radlora_router")  # trained routers of a 2-step run barely differ per input
        final_models.append(model)
        return model

    monkeypatch.setattr(RadLoRA, "finalize", finalize_with_varied_routing)
    setup = TrialSetup(
        arm="a",
        method="radlora",
        model="random:bert-tiny",
        metric="accuracy",
        training=TrainingSpec(epochs=1, batch_size=32),
        fixed={},
    )
    final = run_trial(setup, {}, 0, polarity, lambda m, a: None, tmp_path)

    val = polarity.splits["validation"]
    every = next(val.batches(len(val), polarity.pad_id))
    base_model = load_model(resolve_model("random:bert-tiny"), polarity.num_labels, 0)
    reference = flops.reference_lora_flops_per_token(base_model, default_target_modules(base_model))

    def measured(batch) -> float:
        examples = unpadded_examples(batch)
        base = flops.count_flops_unpadded(base_model, examples)
        return flops.adapter_flops_per_unit(
            base, flops.count_flops_unpadded(final_models[0], examples), non_pad_tokens(batch)
        )

    whole, probe = measured(every), measured(next(val.batches(PROBE_EXAMPLES, polarity.pad_id)))
    assert final["flops_examples"] == len(val) == 64
    assert final["adapter_flops_per_token"] == whole
    assert final["flops_ratio"] == whole / reference
    assert abs(whole - probe) > 0.01 * whole  # the 16-example probe would have reported another number
