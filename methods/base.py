"""The one small interface every fine-tuning method implements.

A method is a class with a pydantic ``Config`` (its hyperparameters, each with a
description and a default) and a handful of hooks that the trainable calls at fixed
points of the training loop. The loop itself lives in ``orchestrator.trial.training``; a
method never owns the loop, so every method is trained, evaluated and measured the
same way and comparisons between arms stay fair.

Order of the hooks in one trial::

    model = method.build(base_model, ctx)              # wrap / inject adapters
    groups = method.param_groups(model, weight_decay)  # what the optimizer holds
    for each optimizer step:
        out = model(**batch)                           # out.loss includes the task loss
        loss = out.loss + (method.extra_loss(model, step) or 0)
        loss.backward(); optimizer.step(); scheduler.step()
        method.after_optimizer_step(model, step)       # gradients still present here
        optimizer.zero_grad()
    after each validation pass: method.after_evaluation(model, step, val_loss)
    model = method.finalize(model)                     # prune / merge, once, after training
    method.start_eval_stats(model); <evaluate>; method.end_eval_stats(model) -> dict
    method.stats(model) -> dict                        # what the judge needs
    method.write_artifacts(model, folder) -> files     # heatmaps etc.

Hooks have safe defaults, so plain methods (``lora``, ``full``) implement ``build`` only.
"""

from __future__ import annotations

import abc
import importlib.util
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

# The one engine import of the interface, kept on purpose: metric names are the
# vocabulary methods and engine share (``exact_metrics`` below names the engine's own
# counts), and ``orchestrator.metrics`` is a leaf catalogue that imports nothing.
from orchestrator.metrics import STATIC_ADAPTER_METRICS

if TYPE_CHECKING:  # torch is heavy; the CLI validates specs without importing it
    import torch
    from torch import nn

#: The rank of the unmerged LoRA every ``flops_ratio`` is taken against (METHODS.md
#: section 8). Here, with ``linear_shapes``, because methods price themselves against it
#: in ``analytic_costs`` before any training, and the engine measures against the same
#: number: the engine imports both from the interface, never the reverse.
REFERENCE_RANK = 8

#: A FLOP formula for one torch op, FlopCounterMode's ``custom_mapping`` signature:
#: ``f(*arg_shapes, out_shape=..., **kwargs) -> int``.
FlopFormula = Callable[..., int]
#: torch op (an ``OpOverloadPacket`` such as ``torch.ops.aten._euclidean_dist``) -> formula.
FlopFormulas = Mapping[Any, FlopFormula]


def linear_shapes(model: nn.Module, suffixes: list[str]) -> list[tuple[str, int, int]]:
    """(name, d_in, d_out) of every nn.Linear whose name ends with one of ``suffixes``.

    Matches peft's rule for a list of target modules (exact name or ``.suffix``), and
    looks through wrappers that keep the adapted layer as ``base_layer`` (peft's, and
    ``methods._injection``'s) to that layer. Part of the interface because both sides
    read a model through it: a method's ``analytic_costs`` and the engine's LoRA-r8
    FLOP reference (``orchestrator.measure.flops``) must agree on which layers count.
    """
    from torch import nn

    from methods._injection import matches_suffix

    found = []
    for name, module in model.named_modules():
        base = getattr(module, "base_layer", module)
        if not isinstance(base, nn.Linear) or ".base_layer" in name or "lora_" in name:
            continue
        if matches_suffix(name, suffixes):
            found.append((name, base.in_features, base.out_features))
    return found


class MethodConfig(BaseModel):
    """Base of every method's hyperparameters.

    Unknown keys are errors (a typo in a hypothesis must not silently fall back to a
    default). Give every field a ``Field(description=...)``: ``orchestrate methods``
    prints it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Requirement:
    """An optional package a method imports, and the extra of this package that installs it.

    Spec validation refuses an arm whose method needs a package that is not installed
    (``orchestrator.spec.checks``), so a missing extra stops ``validate``/``plan``/``run``
    at the arm's line instead of failing every trial with the same ImportError.

    Example::

        requires = (Requirement("bitsandbytes", extra="quant"),)
    """

    module: str  # the top-level import name
    extra: str  # the pip extra of hypothesis-orchestrator that pulls it in
    distribution: str = "hypothesis-orchestrator"

    @property
    def install_command(self) -> str:
        return f"pip install '{self.distribution}[{self.extra}]'"

    def is_installed(self) -> bool:
        """Found on the import path, without importing it: importing bitsandbytes costs
        2-4 s of CPU (``orchestrator.trial.worker_imports``), too much for ``validate``."""
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):  # a broken parent package, a module without __spec__
            return False


@dataclass(frozen=True)
class StepInfo:
    """Where training stands when a hook is called.

    ``step`` is the number of optimizer steps already taken (0-based, the same
    convention as peft's ``update_and_allocate(global_step)`` and HF's
    ``state.global_step`` in ``on_optimizer_step``).
    """

    step: int
    total_steps: int
    epoch: int
    steps_per_epoch: int

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(1.0, self.step / max(1, self.total_steps))


@dataclass
class BuildContext:
    """What a method may know about the run when it builds its model.

    ``target_modules`` is the task's default list of module-name suffixes to adapt
    (e.g. ``["query", "value"]`` for BERT); a method's own ``target_modules`` field,
    when set, wins. ``calibration_batches`` yields a few training batches on the
    trial's device (LoRA-GA and other data-aware initialisations need them).
    """

    total_steps: int
    steps_per_epoch: int
    num_labels: int
    target_modules: list[str]
    seed: int
    device: str = "cpu"
    head_modules: list[str] = field(default_factory=lambda: ["classifier"])
    calibration_batches: Callable[[], Iterable[dict[str, Any]]] | None = None
    model_path: str | None = None  # where the base model was loaded from (QLoRA reloads it)
    #: What peft-wrapping methods pass as ``task_type`` (the task type's
    #: ``peft_task_type``): "SEQ_CLS" for text; None for images, peft's plain
    #: ``PeftModel``, which passes ``pixel_values`` through (``SEQ_CLS`` expects input_ids).
    peft_task_type: str | None = "SEQ_CLS"
    task_type: str = "sequence-classification"  # orchestrator.tasks.types; what the inputs are


class Method(abc.ABC):
    """A fine-tuning method: a config class plus hooks into one fixed training loop.

    Example::

        @register
        class LoRA(Method):
            name = "lora"
            Config = LoraMethodConfig

            def build(self, model, ctx):
                return peft.get_peft_model(model, peft.LoraConfig(r=self.config.r, ...))

    Args:
        config: validated hyperparameters (an instance of ``Config``).
    """

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    #: An instance of ``Config``. Each subclass narrows it next to ``Config``
    #: (``Config = SoraConfig`` then ``config: SoraConfig``) so its hooks read their own
    #: fields with types. Chosen over ``Method(Generic[ConfigT])``: subclasses of methods
    #: (DoRA of LoRA, QLoRA-AdaLoRA of AdaLoRA) narrow the same way with no second type
    #: variable, and ``type[Method]`` in the registry and engine needs no variance.
    config: MethodConfig
    summary: ClassVar[str] = ""
    #: Decides per input which adapters run; budget constraints such as
    #: ``flops_ratio <= 0.25`` are meant for these arms.
    routed: ClassVar[bool] = False
    #: Names of the extra metrics this method reports (from ``stats``,
    #: ``end_eval_stats`` or ``after_evaluation``), with what each means. Claims may
    #: name them; a claim naming a metric no arm reports is a validation error.
    metrics: ClassVar[dict[str, str]] = {}
    #: Optional packages the method imports; an arm whose requirement is not installed
    #: is refused when the hypothesis is validated, with the command that installs it.
    #: Ray Tune workers whose arms need no bitsandbytes keep peft from importing it
    #: (``orchestrator.trial.worker_imports``), which saves each worker seconds of start-up.
    requires: ClassVar[tuple[Requirement, ...]] = ()
    #: Metrics (the engine's and the method's own) that the configuration alone fixes,
    #: the same on every seed. Only these may be compared exactly when every confirmation
    #: seed gives one value; any other metric with no spread leaves its claim INCONCLUSIVE
    #: (docs/claims.md). Default: the engine's counts of a static adapter. A method whose
    #: parameter count or FLOPs depend on training (pruning, growth, gates, seeded
    #: clustering) or on the input (routing) must narrow it.
    exact_metrics: ClassVar[frozenset[str]] = STATIC_ADAPTER_METRICS
    #: Task types (``task.type``, ``orchestrator.tasks.types``) the method cannot train,
    #: each with the reason; ``orchestrate validate`` refuses an arm whose method cannot
    #: train the hypothesis's type, at the arm's line, with that reason. Default: none,
    #: the method trains every type (the contract test runs it on a tiny model of each).
    unsupported_task_types: ClassVar[dict[str, str]] = {}

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    @classmethod
    def needs(cls, module: str) -> bool:
        """Whether one of the method's ``requires`` is the top-level package ``module``."""
        return any(requirement.module == module for requirement in cls.requires)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Method:
        """Build from a flat dict of hyperparameters (as a search samples them)."""
        return cls(cls.Config(**params))

    # -- required -----------------------------------------------------------------
    @abc.abstractmethod
    def build(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        """Return the adapted model; only parameters to train keep ``requires_grad``."""

    # -- optional hooks -------------------------------------------------------------
    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups. Default: every trainable parameter, with no
        weight decay on biases, norms and one-element parameters (gates, scales)."""
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias"):
                no_decay.append(param)
            else:
                decay.append(param)
        groups = [{"params": decay, "weight_decay": weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups

    def extra_loss(self, model: nn.Module, step: StepInfo) -> torch.Tensor | None:
        """A term added to the task loss (regularisers, budget penalties)."""
        return None

    def after_optimizer_step(self, model: nn.Module, step: StepInfo) -> None:  # noqa: B027 (optional hook)
        """Called after ``optimizer.step()`` and before ``zero_grad()``, once per
        optimizer step (AdaLoRA's ``update_and_allocate``, ASA, proximal steps)."""

    def after_evaluation(self, model: nn.Module, step: StepInfo, val_loss: float) -> dict[str, float]:
        """Called after each validation pass (plateau-triggered growth). Returns
        metrics to report at this step (e.g. the current rank)."""
        return {}

    def finalize(self, model: nn.Module) -> nn.Module:
        """Once, after training: prune, drop zero ranks, merge. Must keep outputs."""
        return model

    def start_eval_stats(self, model: nn.Module) -> None:  # noqa: B027 (optional hook)
        """Reset per-example counters before an evaluation pass (routed methods)."""

    def end_eval_stats(self, model: nn.Module) -> dict[str, float]:
        """Per-example statistics from the hard decisions of the evaluation pass just
        run, e.g. ``active_layers`` and ``total_rank`` means."""
        return {}

    def stats(self, model: nn.Module) -> dict[str, float]:
        """Static numbers the judge may use (stored parameters, kept modules...)."""
        return {}

    def extra_evaluations(
        self, model: nn.Module, evaluate: Callable[[nn.Module], dict[str, float]]
    ) -> dict[str, float]:
        """After the final evaluation: more passes over the same split with the model
        in other states, e.g. DyLoRA at each of its ``eval_ranks``. ``evaluate(model)``
        returns ``{"<split>_<metric>": ..., "<split>_loss": ...}``; name what comes back
        after it and declare the names in ``metrics``. Must leave the model as found."""
        return {}

    def write_artifacts(self, model: nn.Module, folder: Path) -> list[Path]:
        """Write method-specific files (heatmap PNGs, rank patterns) into ``folder``."""
        return []

    def trainable_adapter_params(self, model: nn.Module) -> int | None:
        """Adapter parameters this step really trains, where that is fewer than the
        ones with ``requires_grad`` (rows allocated up front and not yet in use, as
        plateau_lora's). ``None``: every trainable parameter outside the head counts.
        The engine's ``trainable_params`` is the peak of this over the steps."""
        return None

    def analytic_costs(self, model: nn.Module, ctx: BuildContext) -> dict[str, float]:
        """Costs known from the hyperparameters alone, before any training, e.g.
        ``{"trainable_params": ..., "flops_ratio": ...}`` for a static adapter. A trial
        whose analytic cost already violates a constraint is recorded as infeasible and
        never trained. Return only numbers that training cannot change."""
        return {}

    def flop_formulas(self) -> FlopFormulas:
        """FLOP formulas for torch ops of the built model that FlopCounterMode does not
        count (SNELL's cdist, bitsandbytes' 4-bit matmuls); the engine counts every FLOP
        figure of this method's model with them. Default: none, every op is a matmul-type
        op the counter knows.

        A hook rather than a class attribute: the keys are torch ops, and the CLI imports
        methods without torch. The engine calls it in the trial, where torch is loaded,
        and counts the base model with the same formulas (adapted minus base stays the
        adapter's cost). May return ``{}`` when the optional package that owns the ops
        is missing: then the model cannot contain them.
        """
        return {}

    def reference_target_modules(self, ctx: BuildContext) -> list[str]:
        """Modules on which the unmerged LoRA-r8 FLOP reference is computed: the
        method's own ``target_modules`` if it has that field, else the task's."""
        own = getattr(self.config, "target_modules", None)
        return list(own) if own else list(ctx.target_modules)
