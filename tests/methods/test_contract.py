"""The contract every registered method keeps, checked for each one in fp32 and in bf16.

Table-driven, in the manner of peft's ``tests/test_*_models.py``: the cases are every name
``methods.available_methods()`` returns times the two precisions times the task types
(``TASKS``: a random 2-layer BERT, hidden 32, on token ids; a random 2-layer ViT, hidden 32,
on 32x32 images, fp32 only; a random 2-layer LLaMA, hidden 32, on prompt + completion ids
with the loss on the completion, no head, fp32 only), so a method added to the registry is checked with no new test
code. A method that declares it cannot train a type (``Method.unsupported_task_types``) is
not run on it; ``test_validate_refuses_a_method_on_a_type_it_cannot_train`` checks that
``orchestrate validate`` refuses it there. Each case runs one small trial (one batch of 8)
through the hooks in the order ``methods.base`` documents, once, and the tests below each
check one promise on it:

- the search space's paper defaults (``defaults:`` merged with what the method needs
  fixed) validate against the method's Config;
- three optimizer steps give finite losses and change the function;
- every metric the method declares is reported, finite, and nothing undeclared is;
- measured FLOPs (``orchestrator.measure.flops``) are at least the base model's;
- the parameter counts the method reports match the tensors its adapter holds, and
  only adapter tensors (and the head) train;
- ``finalize`` keeps the logits, and merging (where the method can merge) keeps them
  and brings the FLOPs back to the base model's; where it cannot, the adapter stays
  unmerged and still costs FLOPs;
- the adapter's tensors, loaded into a model freshly built with the same seed, give
  the same logits.

Three steps barely move an adapter that starts at B = 0, so before the logit
comparisons the adapter's tensors are scaled up (``AMPLIFY``), and a test checks that
the comparisons can see the adapter at all.

``bf16`` runs forward and loss under ``torch.autocast("cpu", dtype=torch.bfloat16)`` as
the engine does (``orchestrator.trial.training``): backward, optimizer step and the hooks
after it outside the block, evaluation under it, FLOPs counted outside it.

What a method does differently from the common contract (it cannot merge, it counts
pre-allocated ranks, it reports metrics only for some configurations) is a line of
``CONTRACTS``, and what it does instead is asserted.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from methods import BuildContext, Method, StepInfo, available_methods, get_method
from methods.base import linear_shapes
from orchestrator.measure.flops import count_flops_unpadded
from orchestrator.search.space import SpaceFile
from orchestrator.spec.models import TRAINING_PARAMS
from orchestrator.tasks.types import get_task_type
from orchestrator.tasks.types.sequence_classification import unpadded_examples
from orchestrator.trial.training import seed_everything, split_params

ROOT = Path(__file__).resolve().parents[2]
SEED = 0
STEPS = 3
PRECISIONS = ("fp32", "bf16")
MB = 2**20


# -- the table ----------------------------------------------------------------------------
class Merge(Enum):
    """How a method's trained adapter becomes (or does not become) plain base weights."""

    PEFT = "peft's merge_and_unload()"
    LAYERS = "each MaskedLoraLinear's merged() (what SoRA's merge: true does in finalize)"
    IN_FINALIZE = "finalize itself merges (the method's default)"
    UNMERGED = "cannot merge: the adapter stays and costs FLOPs"
    NO_ADAPTER = "nothing to merge: every base weight is trained"
    UNDECLARED = "not declared in CONTRACTS: finalize must keep the logits, nothing more"


class FinalParams(Enum):
    """What ``trainable_params_final`` (when a method reports it) counts."""

    STORED = "every adapter parameter left in the finalized model"
    BEFORE_MERGE = "every adapter parameter before finalize merges them away"
    ACTIVE_RANKS = "the active rank prefix of pre-allocated factors: rank * (d_in + d_out) per module"
    TRAINED = "adapter parameters still trained at the end (frozen subspaces excluded)"


@dataclass(frozen=True)
class Contract:
    """One method's line of the table; a method without a line gets ``Contract()``."""

    fixed: dict[str, Any] = field(default_factory=dict)  # merged over the space's defaults
    merge: Merge = Merge.UNDECLARED
    why_not: str = ""  # for UNMERGED: why the method cannot merge
    final_params: FinalParams = FinalParams.STORED
    #: adapter parameters implied by the reported ranks: f(stats, widths of the adapted
    #: modules, their d_out) for LoRA-shaped adapters
    params_from_rank: Callable[[dict[str, float], list[int], list[int]], float] | None = None
    #: the declared metrics a configuration reports (default: all of them)
    expected_metrics: Callable[[Method], set[str]] | None = None


def lora_params(stats: dict[str, float], widths: list[int], _outs: list[int]) -> float:
    """r (d_in + d_out) per module, every module at the same rank."""
    return stats["total_rank"] / len(widths) * sum(widths)


def dora_params(stats: dict[str, float], widths: list[int], outs: list[int]) -> float:
    """LoRA's plus the magnitude vector, d_out per module."""
    return lora_params(stats, widths, outs) + sum(outs)


_RANKED = re.compile(r"^(val|test)_\w+_r\d+$")


def dylora_metrics(method: Method) -> set[str]:
    """DyLoRA declares ``<split>_<metric>_r<b>`` for every split, task metric and power of
    two; a run reports them for the evaluated split and metric at its ``eval_ranks``."""
    ranks = [b for b in method.config.eval_ranks if b <= method.config.r_max]
    per_rank = {f"{key}_r{b}" for key in EVAL_KEYS for b in ranks}
    return {name for name in method.metrics if not _RANKED.match(name)} | per_rank


CONTRACTS: dict[str, Contract] = {
    "full": Contract(merge=Merge.NO_ADAPTER),
    "lora": Contract(merge=Merge.PEFT, params_from_rank=lora_params),
    "dora": Contract(merge=Merge.PEFT, params_from_rank=dora_params),
    "pissa": Contract(merge=Merge.PEFT, params_from_rank=lora_params),
    "lora_ga": Contract(merge=Merge.PEFT, params_from_rank=lora_params),
    # the contract is about a method that trains: mode none is LoRA; the faults themselves
    # are tested in tests/test_faults.py, and test_the_loss_check_catches_a_nan_loss below
    "failing": Contract(fixed={"mode": "none"}, merge=Merge.PEFT, params_from_rank=lora_params),
    "adalora": Contract(merge=Merge.PEFT),
    "adamss": Contract(merge=Merge.PEFT, final_params=FinalParams.TRAINED),
    "qlora_adalora": Contract(merge=Merge.UNMERGED, why_not="peft has no merge into 4-bit AdaLoRA layers"),
    "galora": Contract(merge=Merge.UNMERGED, why_not="kept modules stay unmerged by design (methods/galora.py)"),
    "cogalora": Contract(merge=Merge.UNMERGED, why_not="routed per input: a merged update would run for every input"),
    "radlora": Contract(merge=Merge.UNMERGED, why_not="routed per input: a merged update would run for every input"),
    "sora": Contract(merge=Merge.LAYERS),
    "plateau_lora": Contract(merge=Merge.LAYERS, final_params=FinalParams.ACTIVE_RANKS),
    "dylora": Contract(merge=Merge.LAYERS, final_params=FinalParams.ACTIVE_RANKS, expected_metrics=dylora_metrics),
    "snell": Contract(merge=Merge.IN_FINALIZE, final_params=FinalParams.BEFORE_MERGE),
}

EVAL_KEYS = ("val_loss", "val_accuracy")  # what the evaluate() handed to extra_evaluations returns


# -- precision ----------------------------------------------------------------------------
def autocast(precision: str):
    """The engine's own block (``orchestrator.trial.precision``): forced bf16 autocast on CPU,
    nothing for fp32, whatever this CPU would choose under ``auto``."""
    from orchestrator.trial.precision import autocast as engine_autocast
    from orchestrator.trial.precision import resolve_precision

    return engine_autocast(resolve_precision(precision, "cpu"))


#: How far logits that must agree (finalize, merge, reload) may differ, as a fraction of
#: the largest logit: rounding errors scale with the computation, not with each element
#: (a logit near 0 carries the error of the sums that cancelled into it). Measured over
#: every method, adapters amplified: fp32 differs by at most 6e-7 of the largest logit
#: (PiSSA's merge: W_res + s B A reorders a sum); bf16 by at most 7.6e-3 of it (PiSSA's
#: merge again: every matmul rounds to 8 mantissa bits, one bf16 ulp is 2^-8 = 3.9e-3),
#: so bf16 is allowed 4 ulps. The
#: exact comparison is fp32's; bf16's catches what only autocast breaks (dtype errors,
#: NaN, an update lost to rounding).
TOLERANCE = {"fp32": 1e-5, "bf16": 2.0**-6}

#: After three steps from B = 0 an adapter barely moves the logits (measured 2e-7 for
#: AdaLoRA, 1e-4 for LoRA), below what a wrong merge would have to exceed to be seen.
#: Before the comparisons every adapter tensor is multiplied by this factor, which
#: keeps exact zeros (AdaLoRA's masked triplets, SoRA's and GaLoRA's pruned gates) and
#: raises the adapter's share of the largest logit to 0.3% (SNELL), 0.5% (AdaLoRA) and
#: 5% (AdaMSS) .. 140% (PiSSA), measured; test_the_logit_comparisons_can_see_the_adapter
#: keeps it above 20 fp32 tolerances.
AMPLIFY = 8.0


def assert_same_logits(actual: torch.Tensor, expected: torch.Tensor, precision: str, what: str) -> None:
    atol = TOLERANCE[precision] * float(expected.abs().max())
    torch.testing.assert_close(
        actual.float(), expected.float(), atol=atol, rtol=0.0, msg=lambda m: f"{what} ({precision}): {m}"
    )


# -- data -------------------------------------------------------------------------------------
def text_train_batch() -> dict[str, torch.Tensor]:
    """8 examples of 12 tokens, labels a function of the first token (learnable)."""
    ids = torch.randint(1000, 1100, (8, 12), generator=torch.Generator().manual_seed(10))
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "labels": ids[:, 0] % 2,
    }


def text_eval_batch() -> dict[str, torch.Tensor]:
    """8 other examples of 5..12 tokens, right-padded with 0 (routers pool over real tokens only)."""
    ids = torch.randint(1000, 1100, (8, 12), generator=torch.Generator().manual_seed(11))
    lengths = torch.tensor([12, 5, 9, 12, 7, 11, 6, 10])
    mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
    return {
        "input_ids": ids * mask,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "labels": ids[:, 0] % 2,
    }


def image_batch(seed: int) -> dict[str, torch.Tensor]:
    """8 normalised 32x32 RGB images, labels the sign of the first pixel (learnable)."""
    pixels = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return {"pixel_values": pixels, "labels": (pixels[:, 0, 0, 0] > 0).long()}


def single_images(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    return [{"pixel_values": batch["pixel_values"][i : i + 1]} for i in range(batch["pixel_values"].shape[0])]


PROMPT = 8  # tokens of prompt before each causal-LM example's completion


def lm_batch(seed: int, lengths: list[int] | None = None) -> dict[str, torch.Tensor]:
    """8 prompt + completion examples of 12 tokens (or ``lengths``, right-padded with 0),
    labels -100 on the 8 prompt tokens and on padding, as the causal-LM type batches them;
    the completion repeats the prompt's first tokens (learnable)."""
    ids = torch.randint(1000, 1100, (8, 12), generator=torch.Generator().manual_seed(seed))
    ids[:, PROMPT:] = ids[:, : 12 - PROMPT]
    mask = (torch.arange(12)[None, :] < torch.tensor(lengths or [12] * 8)[:, None]).long()
    labels = torch.where(mask.bool(), ids, -100)
    labels[:, :PROMPT] = -100
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": labels}


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, labels)


def completion_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The causal LM's: next-token cross-entropy on the completion's tokens only."""
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def classification_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def completion_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Next-token accuracy on the completion (the contract's stand-in for exact match)."""
    targets = labels[:, 1:]
    counted = targets != -100
    return float((logits[:, :-1].argmax(-1) == targets)[counted].float().mean())


@dataclass(frozen=True)
class TaskCase:
    """A task type's tiny model and batches: what one contract case trains and measures."""

    type: str
    model: str
    train_batch: Callable[[], dict[str, torch.Tensor]]
    eval_batch: Callable[[], dict[str, torch.Tensor]]
    singles: Callable[[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]  # unpadded, one at a time
    precisions: tuple[str, ...] = PRECISIONS
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = classification_loss  # (logits, labels)
    accuracy: Callable[[torch.Tensor, torch.Tensor], float] = classification_accuracy
    dataset: str = "synthetic:polarity"  # what a probe hypothesis of this type reads


TASKS = {
    "text": TaskCase(
        "sequence-classification", "random:bert-tiny", text_train_batch, text_eval_batch, unpadded_examples
    ),
    # fp32 only: bf16 is a property of the method's layers, checked on text; images add the ViT's inputs
    "image": TaskCase(
        "image-classification",
        "random:vit-tiny",
        lambda: image_batch(10),
        lambda: image_batch(11),
        single_images,
        ("fp32",),
        dataset="embedded:digits",
    ),
    # fp32 only, as images; a random LLaMA (hidden 32, 2 layers, the SmolLM2 tokenizer's vocab), no head
    "lm": TaskCase(
        "causal-lm",
        "random:llama-tiny",
        lambda: lm_batch(10),
        lambda: lm_batch(11, [12, 9, 10, 12, 11, 9, 12, 10]),
        unpadded_examples,
        ("fp32",),
        completion_loss,
        completion_accuracy,
        "synthetic:polarity-lm",
    ),
}
TEXT = TASKS["text"]


def inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def flop_probe(task: TaskCase = TEXT) -> list[dict[str, torch.Tensor]]:
    """Four validation examples, one at a time and unpadded, as the engine counts them."""
    return task.singles(inputs(task.eval_batch()))[:4]


# -- building -------------------------------------------------------------------------------
def contract_of(name: str) -> Contract:
    return CONTRACTS.get(name, Contract())


def space_defaults(name: str) -> dict[str, Any]:
    import yaml

    path = ROOT / "search_spaces" / f"{name}.yaml"
    if not path.exists():
        return {}
    return dict(SpaceFile(**yaml.safe_load(path.read_text())).defaults)


def contract_params(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training params, method params) of the paper defaults plus the contract's fixed values."""
    return split_params({**space_defaults(name), **contract_of(name).fixed})


def base_model(task: TaskCase = TEXT) -> nn.Module:
    task_type = get_task_type(task.type)
    return task_type.load_model(task_type.resolve_model(task.model), num_labels=2, seed=SEED)


def context(model: nn.Module, task: TaskCase = TEXT) -> BuildContext:
    """What ``run_trial`` hands a method, from the task's type."""
    task_type = get_task_type(task.type)
    batches = [task.train_batch(), task.eval_batch()]
    return BuildContext(
        total_steps=STEPS,
        steps_per_epoch=STEPS,
        num_labels=2,
        target_modules=task_type.default_target_modules(model),
        seed=SEED,
        head_modules=task_type.head_modules(model),
        calibration_batches=lambda: iter(batches),
        peft_task_type=task_type.peft_task_type,
        task_type=task_type.name,
    )


def build(name: str, task: TaskCase = TEXT) -> tuple[Method, nn.Module, BuildContext]:
    """The method from its contract params on a fresh base, seeded as ``run_trial`` seeds:
    the same call twice builds the same model (randomized SVDs and inits included)."""
    seed_everything(SEED)
    method = get_method(name).from_params(contract_params(name)[1])
    model = base_model(task)
    ctx = context(model, task)
    return method, method.build(model, ctx), ctx


def needs_optional_dependencies(name: str) -> None:
    if get_method(name).needs("bitsandbytes"):
        pytest.importorskip("bitsandbytes", reason="the quant extra (bitsandbytes) is not installed")


# -- naming the adapter's tensors -------------------------------------------------------------
def base_name(name: str) -> str:
    """A tensor's name in the unadapted model: peft's prefix, ``base_layer`` and the head
    copies (``modules_to_save`` / ``original_module``) removed."""
    name = name.removeprefix("base_model.model.")
    for wrapper in (".base_layer.", ".modules_to_save.default.", ".original_module."):
        name = name.replace(wrapper, ".")
    return name


def is_head(name: str, heads: list[str]) -> bool:
    return any(part in heads for part in name.split("."))


def added_tensors(model: nn.Module, base_names: set[str]) -> dict[str, torch.Tensor]:
    """Parameters and buffers the method added: those with no counterpart in the base model."""
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    return {name: tensor for name, tensor in tensors.items() if base_name(name) not in base_names}


def numel(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in tensors.values())


# -- one trial ----------------------------------------------------------------------------------
@dataclass
class Trial:
    """Everything one (method, precision) case measured; the tests read it."""

    name: str
    precision: str
    task: TaskCase
    method: Method
    finalized: nn.Module
    losses: list[float]
    eval_loss_before: float
    eval_loss_after: float
    reported: dict[str, float]  # every method metric the hooks returned
    stats_before_finalize: dict[str, float]
    flops_base: int
    flops_trained: int
    flops_finalized: int
    logits_trained: torch.Tensor
    logits_finalized: torch.Tensor
    adapter_effect: float  # largest change of a logit the (amplified) adapter makes
    base_names: set[str]
    heads: list[str]
    trainable_at_build: dict[str, int]  # name -> numel
    all_params_at_build: int
    adapter_state: dict[str, torch.Tensor]  # what "saving the adapter" writes
    adapted_modules: list[tuple[str, int, int]]


def logits(model: nn.Module, batch: dict[str, torch.Tensor], precision: str) -> torch.Tensor:
    model.eval()
    with torch.no_grad(), autocast(precision):
        return model(**inputs(batch)).logits.float()


def batch_loss(model: nn.Module, batch: dict[str, torch.Tensor], precision: str, task: TaskCase = TEXT) -> float:
    return float(task.loss(logits(model, batch, precision), batch["labels"]))


def train(
    method: Method, model: nn.Module, precision: str, lr: float, weight_decay: float, task: TaskCase = TEXT
) -> list[float]:
    """STEPS optimizer steps on one batch, hooks in ``methods.base``'s order, forward and
    loss under the precision's autocast, the rest outside it (``run_trial``'s loop; the
    learning rate is constant here)."""
    optimizer = torch.optim.AdamW(method.param_groups(model, weight_decay), lr=lr)
    batch, losses = task.train_batch(), []
    model.train()
    for step in range(STEPS):
        info = StepInfo(step, STEPS, 0, STEPS)
        with autocast(precision):
            loss = model(**batch).loss
            extra = method.extra_loss(model, info)
            if extra is not None:
                loss = loss + extra
        losses.append(loss.item())
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        method.after_optimizer_step(model, info)
        optimizer.zero_grad(set_to_none=True)
    return losses


def snapshot(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {n: state[n].detach().clone() for n in names}


def amplify(model: nn.Module, names: list[str]) -> None:
    """Multiply the named parameters by AMPLIFY (see there)."""
    wanted = set(names)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in wanted:
                param.mul_(AMPLIFY)


def effect_of(
    model: nn.Module,
    built: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    precision: str,
    with_adapter: torch.Tensor,
) -> float:
    """Largest logit change between the model and the same model with its adapter
    tensors back at their initial values (head as trained)."""
    now = snapshot(model, list(built))
    model.load_state_dict(built, strict=False)
    without = logits(model, batch, precision)
    model.load_state_dict(now, strict=False)
    return float((with_adapter - without).abs().max()) if built else 0.0


def run_contract_trial(name: str, precision: str, task: TaskCase = TEXT) -> Trial:
    training, _ = contract_params(name)
    reference = base_model(task)
    base_names = {n for n, _ in reference.named_parameters()} | {n for n, _ in reference.named_buffers()}
    all_params = sum(p.numel() for p in reference.parameters())

    method, model, ctx = build(name, task)
    flop_formulas = method.flop_formulas()  # what the trainer counts with, base and adapted alike
    flops_base = count_flops_unpadded(reference, flop_probe(task), flop_formulas)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    adapted_modules = linear_shapes(model, method.reference_target_modules(ctx))
    before = batch_loss(model, task.train_batch(), precision, task)

    adapter_names = [n for n in trainable if base_name(n) not in base_names and not is_head(n, ctx.head_modules)]
    built_adapter = snapshot(model, adapter_names)

    losses = train(method, model, precision, training.get("lr", 1e-3), training.get("weight_decay", 0.0), task)
    after = batch_loss(model, task.train_batch(), precision, task)
    val = task.eval_batch()
    reported = dict(
        method.after_evaluation(model, StepInfo(STEPS, STEPS, 0, STEPS), batch_loss(model, val, precision, task))
    )
    amplify(model, adapter_names)
    adapter_state = snapshot(model, list(trainable))
    logits_trained = logits(model, val, precision)
    adapter_effect = effect_of(model, built_adapter, val, precision, logits_trained)
    flops_trained = count_flops_unpadded(model, flop_probe(task), flop_formulas)
    stats_before = method.stats(model)

    model = method.finalize(model)
    method.start_eval_stats(model)
    logits_finalized = logits(model, val, precision)
    reported.update(method.end_eval_stats(model))
    reported.update(method.stats(model))

    def evaluate(state_now: nn.Module) -> dict[str, float]:
        out = logits(state_now, val, precision)
        return {"val_loss": float(task.loss(out, val["labels"])), "val_accuracy": task.accuracy(out, val["labels"])}

    reported.update(method.extra_evaluations(model, evaluate))
    return Trial(
        name=name,
        precision=precision,
        task=task,
        method=method,
        finalized=model,
        losses=losses,
        eval_loss_before=before,
        eval_loss_after=after,
        reported=reported,
        stats_before_finalize=stats_before,
        flops_base=flops_base,
        flops_trained=flops_trained,
        flops_finalized=count_flops_unpadded(model, flop_probe(task), flop_formulas),
        logits_trained=logits_trained,
        logits_finalized=logits_finalized,
        adapter_effect=adapter_effect,
        base_names=base_names,
        heads=ctx.head_modules,
        trainable_at_build=trainable,
        all_params_at_build=all_params,
        adapter_state=adapter_state,
        adapted_modules=adapted_modules,
    )


def supports(name: str, task: TaskCase) -> bool:
    return task.type not in get_method(name).unsupported_task_types


CASES = [
    pytest.param((name, precision, task), id=f"{name}-{precision}" + ("" if task is TEXT else f"-{key}"))
    for key, task in TASKS.items()
    for name in available_methods()
    if supports(name, task)
    for precision in task.precisions
]


@pytest.fixture(scope="class", params=CASES)
def trial(request) -> Trial:
    """One contract trial per (method, precision, task type), shared by the tests of the
    class; the class scope makes pytest run a case's tests together and free it afterwards."""
    name, precision, task = request.param
    needs_optional_dependencies(name)
    torch.set_num_threads(1)
    return run_contract_trial(name, precision, task)


# -- the space's defaults (no training needed) -----------------------------------------------------
@pytest.mark.parametrize("name", available_methods())
def test_space_defaults_validate_against_the_config(name):
    import yaml

    path = ROOT / "search_spaces" / f"{name}.yaml"
    fields = set(get_method(name).Config.model_fields)
    if path.exists():
        space = SpaceFile(**yaml.safe_load(path.read_text()))
        assert space.method in (None, name)
        unknown = set(space.params) - fields - set(TRAINING_PARAMS)
        assert not unknown, f"{path.name} searches parameters {name}'s Config does not have: {sorted(unknown)}"
    assert set(contract_of(name).fixed) <= fields
    get_method(name).Config(**contract_params(name)[1])  # raises pydantic's ValidationError


# -- the contract, per (method, precision) ------------------------------------------------------------
class TestContract:
    def test_trains_with_finite_losses_that_change_the_function(self, trial: Trial):
        assert len(trial.losses) == STEPS
        assert all(math.isfinite(loss) for loss in trial.losses), trial.losses
        assert math.isfinite(trial.eval_loss_after)
        # eval mode: dropout alone would make training losses differ
        assert trial.eval_loss_after != trial.eval_loss_before, "three optimizer steps left the function unchanged"

    def test_the_logit_comparisons_can_see_the_adapter(self, trial: Trial):
        """A wrong merge or reload must move the logits by more than the fp32 tolerance."""
        if contract_of(trial.name).merge is Merge.NO_ADAPTER:
            return  # full fine-tuning: the trained base is the whole model
        assert trial.adapter_effect > 20 * TOLERANCE["fp32"] * float(trial.logits_trained.abs().max())

    def test_reports_every_declared_metric_finite_and_nothing_undeclared(self, trial: Trial):
        declared = set(trial.method.metrics)
        expected_of = contract_of(trial.name).expected_metrics
        expected = expected_of(trial.method) if expected_of else declared
        assert expected <= declared
        assert not expected - set(trial.reported), (
            f"declared but not reported: {sorted(expected - set(trial.reported))}"
        )
        assert not set(trial.reported) - declared, (
            f"reported but not declared: {sorted(set(trial.reported) - declared)}"
        )
        bad = {k: v for k, v in trial.reported.items() if not math.isfinite(float(v))}
        assert not bad, f"non-finite metrics: {bad}"

    def test_flops_are_at_least_the_base_models(self, trial: Trial):
        assert trial.flops_base > 0
        assert trial.flops_trained >= trial.flops_base
        assert trial.flops_finalized >= trial.flops_base

    def test_only_the_adapter_and_the_head_train(self, trial: Trial):
        if contract_of(trial.name).merge is Merge.NO_ADAPTER:
            assert sum(trial.trainable_at_build.values()) == trial.all_params_at_build
            return
        base_trained = [
            n for n in trial.trainable_at_build if base_name(n) in trial.base_names and not is_head(n, trial.heads)
        ]
        assert not base_trained, f"base weights left trainable: {base_trained}"
        assert any(not is_head(n, trial.heads) for n in trial.trainable_at_build), "no adapter parameter trains"

    def test_reported_parameter_counts_match_the_adapter_tensors(self, trial: Trial):
        contract, stats, model = contract_of(trial.name), trial.reported, trial.finalized
        added = added_tensors(model, trial.base_names)
        built = {n: t for n, t in added.items() if n in trial.trainable_at_build}  # the adapter's parameters
        checked = []
        if "trainable_params_final" in stats:
            assert stats["trainable_params_final"] == self._final_params(contract.final_params, trial, built), (
                contract.final_params.value
            )
            checked.append("trainable_params_final")
        if "adapter_params_stored" in stats:
            assert stats["adapter_params_stored"] == numel(built)
            checked.append("adapter_params_stored")
        if "router_params" in stats:
            assert stats["router_params"] == numel({n: t for n, t in built.items() if "router" in n})
            checked.append("router_params")
        if "adapter_memory_mb" in stats:
            assert stats["adapter_memory_mb"] * MB == pytest.approx(
                sum(t.numel() * t.element_size() for t in added.values())
            )
            checked.append("adapter_memory_mb")
        if contract.params_from_rank is not None:
            widths = [d_in + d_out for _, d_in, d_out in trial.adapted_modules]
            outs = [d_out for _, _, d_out in trial.adapted_modules]
            assert contract.params_from_rank(stats, widths, outs) == numel(built)
            checked.append("total_rank")
        if contract.merge is Merge.NO_ADAPTER:
            assert not added
            checked.append("no adapter")
        assert checked, f"{trial.name} reports no parameter count this test can check against its tensors"

    @staticmethod
    def _final_params(rule: FinalParams, trial: Trial, built: dict[str, torch.Tensor]) -> float:
        if rule is FinalParams.STORED:
            return numel(built)
        if rule is FinalParams.BEFORE_MERGE:
            assert trial.stats_before_finalize["trainable_params_final"] == sum(
                n for name, n in trial.trainable_at_build.items() if not is_head(name, trial.heads)
            )
            return trial.stats_before_finalize["trainable_params_final"]
        if rule is FinalParams.TRAINED:
            return numel({n: t for n, t in built.items() if t.requires_grad})
        from methods._injection import adapters
        from methods._masked_lora import MaskedLoraLinear

        trial.finalized.eval()
        layers = [layer for _, layer in adapters(trial.finalized, MaskedLoraLinear)]
        active = sum(layer.active_params(layer.active_rank) for layer in layers)
        assert active <= numel(built)
        return active

    def test_finalize_keeps_the_logits(self, trial: Trial):
        assert_same_logits(trial.logits_finalized, trial.logits_trained, trial.precision, "finalize")

    def test_merging_keeps_the_logits_and_costs_no_flops(self, trial: Trial):
        contract = contract_of(trial.name)
        model = trial.finalized
        if contract.merge is Merge.UNDECLARED:  # a method without a line: test_finalize_keeps_the_logits is its check
            return
        if contract.merge is Merge.UNMERGED:
            assert contract.why_not
            assert trial.flops_finalized > trial.flops_base, "an unmergeable adapter must still cost FLOPs"
            return
        if contract.merge is Merge.NO_ADAPTER or contract.merge is Merge.IN_FINALIZE:
            assert trial.flops_finalized == trial.flops_base
            assert not added_tensors(model, trial.base_names)
            return
        merged = copy.deepcopy(model)
        merged.eval()
        if contract.merge is Merge.PEFT:
            merged = merged.merge_and_unload()
        else:
            from methods._injection import adapters, replace_module
            from methods._masked_lora import MaskedLoraLinear

            for name, layer in list(adapters(merged, MaskedLoraLinear)):
                replace_module(merged, name, layer.merged())
        assert not added_tensors(merged, trial.base_names)
        assert_same_logits(
            logits(merged, trial.task.eval_batch(), trial.precision), trial.logits_finalized, trial.precision, "merge"
        )
        assert count_flops_unpadded(merged, flop_probe(trial.task), trial.method.flop_formulas()) == trial.flops_base

    def test_a_reloaded_adapter_gives_the_same_logits(self, trial: Trial):
        _, fresh, _ = build(trial.name, trial.task)
        missing = set(trial.adapter_state) - set(fresh.state_dict())
        assert not missing, f"saved tensors a fresh build does not have: {sorted(missing)}"
        fresh.load_state_dict(trial.adapter_state, strict=False)
        reloaded = logits(fresh, trial.task.eval_batch(), trial.precision)
        assert_same_logits(reloaded, trial.logits_trained, trial.precision, "reload")


def test_the_loss_check_catches_a_nan_loss():
    """The finite-loss check is not vacuous: ``failing`` in mode nan fails it."""
    method = get_method("failing").from_params({"mode": "nan", "when": 1})
    model = method.build(base_model(), context(base_model()))
    losses = train(method, model, "fp32", 1e-3, 0.0)
    assert math.isfinite(losses[0]) and not all(math.isfinite(loss) for loss in losses[1:])


UNSUPPORTED = [
    pytest.param(name, task, id=f"{name}-{key}")
    for key, task in TASKS.items()
    for name in available_methods()
    if not supports(name, task)
]


@pytest.mark.parametrize("name,task", UNSUPPORTED)
def test_validate_refuses_a_method_on_a_type_it_cannot_train(name, task, tmp_path, capsys):
    """A method that declares it cannot train a type is refused at its arm's line, with its reason."""
    from orchestrator.cli import main

    reason = get_method(name).unsupported_task_types[task.type]
    assert reason.strip(), f"{name} declares no reason for not training {task.type}"
    dataset = task.dataset
    path = tmp_path / "h.yaml"
    path.write_text(
        "name: unsupported\nstatement: a method on a type it cannot train\n"
        f"task: {{type: {task.type}, model: {task.model}, dataset: {dataset}}}\n"
        f"arms:\n  a: {{method: lora}}\n  b: {{method: {name}}}\n"
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:6: arms.b.method: method {name!r} cannot train task.type {task.type}" in err
