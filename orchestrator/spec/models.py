"""The hypothesis file as typed pydantic models (the ``Spec`` stage of the flow).

Every model forbids unknown keys: a misspelt ``trails_per_arm`` is an error with its
line, never a silently ignored key. Cross-field checks that need the method registry
or other files (methods, spaces, claims) live in ``orchestrator.spec.checks``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.search import registry

#: The names ``search.sampler`` and ``search.scheduler`` accept: the registry's, in its order.
SAMPLERS = tuple(registry.SAMPLERS)
SCHEDULERS = tuple(registry.SCHEDULERS)
#: Training keys that a search space or an arm's ``fixed`` may set per trial
#: (``precision`` per arm: a hypothesis may compare precisions, see hypotheses/precision.yaml).
TRAINING_PARAMS = ("lr", "weight_decay", "warmup_ratio", "precision")


#: Arm names a hypothesis cannot use (they mean something else where arms are named).
RESERVED_ARM_NAMES = frozenset({"all"})


class Strict(BaseModel):
    """Unknown keys are errors, and so is a NaN or an infinity in a number field (YAML's
    ``.nan`` / ``.inf``): every range check is false for NaN, so it would pass as ``le=1``
    and fail deep in a run, or read "should be <= 1" (``allow_inf_nan=False``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


#: ``task.metric`` when a hypothesis does not set it, per ``task.type`` (else accuracy).
DEFAULT_METRICS = {"causal-lm": "exact_match"}
#: Task metrics a search minimises by default (every other one is maximised).
LOWER_IS_BETTER = frozenset({"perplexity"})


def default_metric(task: Any) -> str:
    """The metric a raw ``task:`` mapping names, or its type's default."""
    if not isinstance(task, dict):
        return "accuracy"
    return str(task.get("metric") or DEFAULT_METRICS.get(str(task.get("type")), "accuracy"))


class TaskSpec(Strict):
    #: The task type (``orchestrator.tasks.types``) owns model loading, preprocessing,
    #: batching, evaluation and the FLOP unit.
    type: Literal["sequence-classification", "image-classification", "causal-lm"] = Field(
        "sequence-classification",
        description="what the inputs are: texts or images to classify, or prompts to complete (causal-lm)",
    )
    model: str = Field(
        "embedded:minilm-l6",
        description="text: embedded:minilm-l6, random:bert-tiny; images: random:vit-tiny; causal-lm: "
        "embedded:smollm2-135m, random:llama-tiny; or a folder or a hub id",
    )
    dataset: str = Field(
        "embedded:rotten-tomatoes",
        description="text: embedded:rotten-tomatoes, synthetic:polarity, csv:PATH, jsonl:PATH; "
        "images: embedded:digits, imagefolder:PATH; causal-lm: embedded:rotten-tomatoes-lm, synthetic:polarity-lm, "
        "csv:PATH, jsonl:PATH (prompt, completion); or a hub id",
    )
    max_length: int = Field(
        64, ge=8, le=4096, description="text: tokens a text is cut to; causal-lm: most tokens of prompt + completion"
    )
    metric: Literal["accuracy", "f1", "mcc", "exact_match", "perplexity"] = Field(
        "accuracy", description="classification: accuracy, f1, mcc; causal-lm: exact_match (default), perplexity"
    )
    train_examples: int | None = Field(None, ge=8, description="cap on training examples (deterministic subset)")
    val_examples: int | None = Field(None, ge=8)
    test_examples: int | None = Field(None, ge=8)
    text_column: str = Field("text", description="column of the texts (text types only)")
    label_column: str = Field("label", description="column of the labels (classification types only)")
    prompt_column: str = Field("prompt", description="column of the prompts (causal-lm only)")
    completion_column: str = Field("completion", description="column of the completions (causal-lm only)")
    target_modules: list[str] | None = Field(None, description="module suffixes to adapt; default per model family")

    @model_validator(mode="before")
    @classmethod
    def _type_default_metric(cls, data: Any) -> Any:
        """A causal LM is scored by exact match unless the hypothesis says otherwise."""
        if isinstance(data, dict) and "metric" not in data and data.get("type") in DEFAULT_METRICS:
            return {**data, "metric": DEFAULT_METRICS[data["type"]]}
        return data


class ArmSpec(Strict):
    method: str
    space: str | None = Field(None, description="search-space YAML; default: the method's shipped space")
    fixed: dict[str, Any] = Field(default_factory=dict, description="hyperparameters held fixed (override the space)")

    @field_validator("fixed")
    @classmethod
    def _finite_fixed(cls, fixed: dict[str, Any]) -> dict[str, Any]:
        """``fixed`` values are typed by the method's config, checked later; a NaN would
        read "should be less than 1" there. Each is reported at its own line."""
        from pydantic import ValidationError
        from pydantic_core import InitErrorDetails, PydanticCustomError

        bad = [key for key, value in fixed.items() if isinstance(value, float) and not math.isfinite(value)]
        if bad:
            raise ValidationError.from_exception_data(
                "fixed",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("finite_number", "Input should be a finite number"),
                        loc=(key,),
                        input=fixed[key],
                    )
                    for key in bad
                ],
            )
        return fixed


class TrainingSpec(Strict):
    epochs: int = Field(3, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=65536)
    eval_batch_size: int = Field(128, ge=1, le=65536)
    lr: float = Field(5e-4, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0, le=1.0)
    warmup_ratio: float = Field(
        0.2,
        ge=0,
        lt=1.0,
        description=(
            "fraction of the optimizer steps spent warming the learning rate up. 0.2, not RoBERTa's 0.06: the "
            "default profiles run ~64 steps, and with 4 warm-up steps LoRA r=8 at lr 5e-3 stayed at chance on some "
            "seeds (loss ln 2) where 13 steps trained every seed tried (measured 2026-11-29, issue 14); the paper "
            "profiles set 0.06"
        ),
    )
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 autocast where the device runs bf16 natively (CPU with AVX512-BF16/AMX, CUDA "
        "with bf16), else fp32; bf16 forces it; fp16 is for GPUs (loss-scaled)",
    )
    group_by_length: bool = Field(
        True, description="batch examples of similar length (less padding; as Trainer's group_by_length)"
    )


class Resources(Strict):
    cpu: float = Field(1, ge=0)
    gpu: float = Field(0, ge=0)
    memory_gb: float | None = Field(None, gt=0)
    custom: dict[str, float] = Field(default_factory=dict)


def _default_objectives() -> dict[str, Literal["max", "min"]]:
    """A function, not a lambda, so that the dict's value type is the Literal."""
    return {"val_accuracy": "max"}


class SearchSpec(Strict):
    sampler: Literal[SAMPLERS] = "tpe"  # type: ignore[valid-type]
    objectives: dict[str, Literal["max", "min"]] = Field(
        default_factory=_default_objectives,
        min_length=1,
        description="default: the task metric on validation, maximised",
    )
    constraints: list[str] = Field(
        default_factory=list, description="e.g. 'flops_ratio <= 0.25'; applied to routed arms"
    )
    trials_per_arm: int = Field(8, ge=1, le=100000)
    max_concurrent: int | None = Field(None, ge=1, description="default: as many as the CPUs allow")
    scheduler: Literal[SCHEDULERS] = Field("asha", description=registry.scheduler_description())  # type: ignore[valid-type]
    startup_trials: int | None = Field(None, ge=0, description="random trials before a model-based sampler starts")
    resources_per_trial: Resources = Field(default_factory=Resources)
    seed: int = Field(0, ge=0, description="seed of the sampler and of every search trial")
    trial_timeout_s: float | None = Field(
        None,
        gt=0,
        description="a trial running longer fails with that reason (from its start, after its worker imported"
        " torch/peft; checked after every step; a hang inside a step is ended by a watchdog)",
    )
    trial_memory_mb: float | None = Field(
        None,
        gt=0,
        description="a trial whose process peaks above this much memory (RSS; GPU: allocated) fails with that reason",
    )
    max_retries: int = Field(
        1,
        ge=0,
        le=100,
        description="retries of a trial whose worker was lost (node loss, killed);"
        " a trial's own error is never retried",
    )
    reuse_trials: bool = Field(
        True,
        description="start from finished trials of earlier runs with the same search"
        " (more trials: only the new ones run)",
    )

    @field_validator("objectives")
    @classmethod
    def _objectives_limit(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 3:
            raise ValueError("at most 3 objectives (multi-objective samplers scale badly beyond)")
        return value


class ConfirmSpec(Strict):
    seeds: int = Field(3, ge=1, le=1000)
    split: Literal["test", "validation"] = "test"
    first_seed: int = Field(1000, ge=0, description="fresh seeds are first_seed, first_seed+1, ...")
    max_seeds: int | None = Field(
        None,
        ge=1,
        le=1000,
        description=(
            "sequential confirmation: after each round of `seeds` seeds the judge looks, and the arms of claims still "
            "INCONCLUSIVE get the next `seeds` seeds, up to max_seeds per arm (each look spends a share of alpha); "
            "default: seeds, one look"
        ),
    )


class JudgeSpec(Strict):
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    family_wise: bool | None = Field(None, description="Holm across claims; default on when there are several")


class Hypothesis(Strict):
    """One hypothesis file, with its profile applied (``spec.loader``).

    ``plan.make_plan`` turns it into the ``Plan`` the later stages read; none of them
    reads this model.

    Attributes:
        name: the hypothesis's name: its MLflow experiment, run state and lock
            (lowercase letters, digits, ``_`` and ``-``).
        statement: what the hypothesis states, in words (the note on its MLflow run).
        source: where it comes from (a paper, a section), shown in the report.
        refines: the hypothesis this one refines, by name (``radlora-quarter-flops``) or
            by file path (relative to this file); a tag of its MLflow run, shown as a
            lineage by ``orchestrate history`` and ``compare``. None: a first version.
        task: the model, the dataset, its splits and the task metric.
        arms: arm name -> the method it trains, its search space and fixed values.
        training: the training recipe every trial starts from.
        search: how each arm is searched (sampler, objectives, constraints, trials,
            scheduler) and how every search runs (resources, concurrency, retries, limits).
        confirm: how each arm's winner is confirmed on fresh seeds.
        expected: the claims, registered before the run (``docs/claims.md``).
        judge: how the claims are judged (confidence, family-wise correction).
        profiles: profile name -> overrides of the sections above (``--profile``).
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,79}$")
    statement: str = Field(min_length=1)
    source: str = ""
    refines: str | None = Field(default=None, min_length=1)
    task: TaskSpec = Field(default_factory=TaskSpec)
    arms: dict[str, ArmSpec] = Field(min_length=1)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    confirm: ConfirmSpec = Field(default_factory=ConfirmSpec)
    expected: list[str] = Field(default_factory=list)
    judge: JudgeSpec = Field(default_factory=JudgeSpec)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _default_objective(cls, data: Any) -> Any:
        """No objectives given: maximise the task's own metric on validation (so a
        profile that switches the metric to mcc does not keep optimising accuracy)."""
        if isinstance(data, dict):
            search = data.get("search")
            task = data.get("task")
            metric = default_metric(task)
            objective = {f"val_{metric}": "min" if metric in LOWER_IS_BETTER else "max"}
            if search is None:
                data = {**data, "search": {"objectives": objective}}
            elif isinstance(search, dict) and "objectives" not in search:
                data = {**data, "search": {**search, "objectives": objective}}
        return data

    @field_validator("arms")
    @classmethod
    def _arm_names(cls, arms: dict[str, ArmSpec]) -> dict[str, ArmSpec]:
        import re

        from pydantic import ValidationError
        from pydantic_core import InitErrorDetails, PydanticCustomError

        not_identifiers = [name for name in arms if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name))]
        # ``all:`` scopes a search constraint to every arm, so an arm called "all" would make it ambiguous
        reserved = [name for name in arms if name in RESERVED_ARM_NAMES]
        if not_identifiers or reserved:  # a ValidationError (not ValueError): each at its arm's line
            raise ValidationError.from_exception_data(
                "arms",
                [
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "arm_name",
                            "arm name {name} must be an identifier (letters, digits, _), claims refer to it",
                            {"name": repr(name)},
                        ),
                        loc=(name,),
                        input=name,
                    )
                    for name in not_identifiers
                ]
                + [
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "arm_name",
                            "arm name {name} is reserved: a constraint scoped 'all:' means every arm",
                            {"name": repr(name)},
                        ),
                        loc=(name,),
                        input=name,
                    )
                    for name in reserved
                ],
            )
        return arms
