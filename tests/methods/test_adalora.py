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
    method, model = build(30, init_r=6, target_r=2, tinit_frac=0.1, tfinal_frac=1 / 6, deltaT_frac=1 / 15)
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
    method, model = build(12, init_r=4, target_r=1, tinit_frac=0.0, tfinal_frac=0.0, deltaT_frac=0.01)
    assert method.schedule.tfinal == 1 and method.schedule.final_mask_step == 11
    train(method, model, 12)
    assert sum(kept_ranks(model).values()) == 1 * M


def test_fractions_become_peft_step_counts_of_the_real_run():
    config = AdaLoRA.Config(tinit_frac=0.1, tfinal_frac=0.4, deltaT_frac=0.01)
    schedule = resolve_schedule(config, 200)
    assert (schedule.total_step, schedule.tinit, schedule.tfinal, schedule.deltaT) == (200, 20, 80, 2)
    _method, model = build(50, tinit_frac=0.1, tfinal_frac=0.4, deltaT_frac=0.1)
    peft_config = model.peft_config["default"]
    assert (peft_config.total_step, peft_config.tinit, peft_config.tfinal, peft_config.deltaT) == (50, 5, 20, 5)


def test_schedule_is_clamped_to_what_peft_accepts():
    schedule = resolve_schedule(AdaLoRA.Config(tinit_frac=0.05, tfinal_frac=0.9), 3)
    assert schedule.tfinal == 2 and schedule.tinit == 0  # tfinal <= T - 1 and tinit < T - tfinal
    schedule = resolve_schedule(AdaLoRA.Config(tinit_frac=0.3, tfinal_frac=0.6, deltaT_frac=0.001), 2)
    assert (schedule.tinit, schedule.tfinal, schedule.deltaT) == (0, 1, 1)  # deltaT at least 1 step
    with pytest.raises(ValueError, match="at least 2"):
        resolve_schedule(AdaLoRA.Config(), 1)


def space_file(name: str = "adalora") -> dict:
    return yaml.safe_load((ROOT / "search_spaces" / f"{name}.yaml").read_text())


def space_default_params(name: str = "adalora") -> dict:
    from orchestrator.spec.models import TRAINING_PARAMS

    return {k: v for k, v in space_file(name)["defaults"].items() if k not in TRAINING_PARAMS}


def schedule_choices(name: str = "adalora") -> list[tuple[str, object]]:
    """Every choice the shipped space offers for a schedule point (tinit, tfinal, deltaT)."""
    params = space_file(name)["params"]
    return [
        (param, choice)
        for param, spec in params.items()
        if param.startswith(("tinit", "tfinal", "deltaT"))
        for choice in spec["choices"]
    ]


def record_budget_masks(model) -> list[tuple[int, int]]:
    """Spy on peft's RankAllocator: (step, non-zero E entries right after the mask)
    for every budget mask it applies."""
    allocator = model.base_model.rankallocator
    update, mask = allocator.update_and_allocate, allocator.mask_to_budget
    current_step, events = [], []

    def update_noting_the_step(inner, global_step, force_mask=False):
        current_step[:] = [global_step]
        return update(inner, global_step, force_mask=force_mask)

    def mask_and_record(inner, budget):
        pattern = mask(inner, budget)
        nonzero = sum(int((layer.lora_E["default"] != 0).sum()) for layer in method_layers(model).values())
        events.append((current_step[0], nonzero))
        return pattern

    allocator.update_and_allocate = update_noting_the_step
    allocator.mask_to_budget = mask_and_record
    return events


@pytest.mark.parametrize(("param", "choice"), schedule_choices())
def test_a_64_step_run_allocates_ranks_at_several_steps(param, choice):
    # the default profile's run length (1000 examples / 32 x 2 epochs); a fixed deltaT
    # of 50 or 100 steps put no mask inside the pruning window (steps 7-37): one mask only
    steps = 64
    method, model = build(steps, **{**space_default_params(), param: choice})
    events = record_budget_masks(model)
    train(method, model, steps)
    mask_steps = [step for step, _ in events]
    assert len(set(mask_steps)) >= 3, events
    assert len({nonzero for _, nonzero in events}) >= 3, events  # the kept ranks really change, several times
    assert events[-1][1] <= method.config.target_r * M
    assert mask_steps == method.schedule.mask_steps()


@pytest.mark.parametrize("name", ["adalora", "qlora_adalora"])
@pytest.mark.parametrize("steps", [8, 64, 6_315, 50_520])  # smoke, default, SST-2 x 3 epochs, the paper's SST-2
def test_every_schedule_in_the_space_masks_several_times_at_any_run_length(name, steps):
    import itertools

    choices: dict[str, list] = {}
    for param, choice in schedule_choices(name):
        choices.setdefault(param, []).append(choice)
    for combination in itertools.product(*choices.values()):
        params = {**space_default_params(name), **dict(zip(choices, combination, strict=True))}
        schedule = resolve_schedule(get_method(name).Config(**params), steps)
        assert len(schedule.mask_steps()) >= 3, (params, schedule)


def test_long_runs_mask_as_often_whatever_their_length():
    # the schedule is a shape over the run, as in the paper's scripts: ~243 masks at
    # 6,315 steps and ~250 at 50,520 with the default deltaT_frac of 0.002
    config = AdaLoRA.Config(**space_default_params())
    short, long = (len(resolve_schedule(config, steps).mask_steps()) for steps in (6_315, 50_520))
    assert short > 100 and long == pytest.approx(short, rel=0.05)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"tinit_frac": 0.5, "tfinal_frac": 0.5}, "tinit_frac \\+ tfinal_frac must be < 1"),
        ({"tinit_frac": 0.1, "tfinal_frac": 0.4, "deltaT_frac": 0.3}, "half the pruning window"),
        ({"tinit_frac": 1.0}, "less than 1"),
        ({"deltaT_frac": 0.0}, "greater than 0"),
        ({"tfinal_frac": -0.1}, "greater than or equal to 0"),
    ],
)
def test_schedule_fractions_are_validated(params, message):
    with pytest.raises(ValueError, match=message):
        AdaLoRA.Config(**params)


def test_schedule_fractions_are_documented():
    for field in ("tinit_frac", "tfinal_frac", "deltaT_frac"):
        assert "fraction of all optimizer steps" in AdaLoRA.Config.model_fields[field].description


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
    method, model = build(20, init_r=6, target_r=2, tinit_frac=0.1, tfinal_frac=0.2, deltaT_frac=0.1)
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
    method, model = build(12, init_r=4, target_r=2, tinit_frac=1 / 12, tfinal_frac=0.25, deltaT_frac=0.01)
    train(method, model, 12)
    files = method.write_artifacts(model, tmp_path)
    assert {f.name for f in files} == {"rank_pattern.json", "rank_heatmap.png"}
    record = json.loads((tmp_path / "rank_pattern.json").read_text())
    assert sum(record["ranks"].values()) == 2 * M
    assert record["schedule"]["final_mask_step"] == 9
    assert record["schedule"]["budget_masks"] == 8  # steps 2..8, then the final one at 9
    assert all(sum(mask) == record["ranks"][k.rsplit(".lora_E", 1)[0]] for k, mask in record["rank_pattern"].items())
    assert (tmp_path / "rank_heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_every_reported_metric_is_declared():
    method, model = build(10, init_r=4, target_r=2)
    assert set(method.stats(model)) <= set(AdaLoRA.metrics)


def _space_params_are_valid(space_file: Path, method_name: str) -> None:
    from orchestrator.search.space import SpaceFile
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
