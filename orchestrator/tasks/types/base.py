"""What a task type owns, behind one small interface: everything that depends on what
the inputs are (token ids, images, later prompt + completion), so that the engine
(``orchestrator.trial.training``, ``orchestrator.measure.flops``, the spec checks, the
runner) asks the type and never branches on its name.

A type owns, in the order a run meets them:

- spec stage (no torch): syntactic checks of ``task.model`` and ``task.dataset``
  (``model_ref_problem``, ``dataset_ref_problem``), the ``TaskSpec`` fields only it
  reads (``own_fields``), and its data files' problems (``data_file_issues``);
- the driver, once per run: the data as compact numpy arrays (``prepare``), cached as
  ``.npz`` by ``orchestrator.tasks.prepare`` through ``split_arrays`` /
  ``split_from_arrays`` / ``split_problem`` (the cache file and its checksum are the
  engine's; what makes the arrays a valid split is the type's);
- the trial: the model (``load_model``: Auto classes, eager attention, seeded), the
  modules adapted by default and the head trained in full (peft's ``modules_to_save``),
  the peft task type the methods pass on (``peft_task_type``), batching (``batches``),
  one evaluation pass (``evaluate_split`` -> ``SplitOutcome``), and the FLOP probe:
  single examples without padding, and how many units (``flop_unit``: a token or an
  image) they hold, so FLOPs are reported per unit and the LoRA-r8 reference, a
  per-token formula, is scaled to the same unit (``tokens_per_unit``).

Causal LM (``causal_lm``) fits the same hooks: prompt + completion arrays, a loss masked
to the completion, ``evaluate_split`` by greedy decoding (predictions = exact-match
hits against gold 1), ``flop_unit = "token"``, no head (``head_modules`` is empty).
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

    from orchestrator.spec.errors import SpecIssue
    from orchestrator.spec.models import TaskSpec
    from orchestrator.spec.yaml_lines import LocatedYaml
    from orchestrator.tasks.prepare import PreparedTask
    from orchestrator.trial.precision import PrecisionChoice

#: Module-name suffixes adapted by default, per model family (the LoRA paper's q, v).
DEFAULT_TARGET_MODULES = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"],
    "distilbert": ["q_lin", "v_lin"],
    "llama": ["q_proj", "v_proj"],
    "vit": ["q_proj", "v_proj"],  # transformers 5 names ViT's attention q_proj..o_proj (4.x: query, value)
}


class ModelUnavailableError(RuntimeError):
    """A model reference that cannot be loaded here (e.g. a hub id with no network)."""


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference: where to load from, and how."""

    ref: str
    path: str | None  # local folder or hub id, or None for a random model built in code
    hidden: int = 0
    layers: int = 0

    @property
    def is_random(self) -> bool:
        return self.path is None


def dataset_identity(dataset: str, base_dir: Path) -> str:
    """What a prepared task's cache key holds for ``task.dataset``: the reference, and for
    a user's ``csv:``/``jsonl:`` file its resolved path and a sha256 of its bytes (an
    edited file is prepared again)."""
    import hashlib

    if not dataset.startswith(("csv:", "jsonl:")):
        return dataset
    kind, raw = dataset.split(":", 1)
    path = Path(raw) if Path(raw).is_absolute() else base_dir / raw
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing"
    return f"{kind}:{path.resolve()}:{digest}"


def random_model_ref(ref: str, family: str) -> ModelRef | None:
    """``random:{family}-tiny`` (hidden 32, 2 layers) or ``random:{family}-h{H}-l{L}``."""
    match = re.fullmatch(rf"random:{family}-(?:tiny|h(?P<hidden>\d+)-l(?P<layers>\d+))", ref)
    if match is None:
        return None
    return ModelRef(ref, None, hidden=int(match["hidden"] or 32), layers=int(match["layers"] or 2))


@dataclass(frozen=True)
class SplitOutcome:
    """One evaluation pass over a split, per example and in split order."""

    predictions: np.ndarray  # int64 predicted labels
    gold: np.ndarray  # int64 labels
    losses: np.ndarray  # float64 cross-entropy of each example (fp32 logits)

    @property
    def mean_loss(self) -> float:
        return float(self.losses.mean()) if len(self.losses) else float("nan")

    def score(self, metric: str) -> float:
        if metric == "perplexity":  # exp of the mean per-example loss: not itself a mean (judged on seeds only)
            return math.exp(self.mean_loss) if math.isfinite(self.mean_loss) else float("nan")
        return score(metric, self.gold, self.predictions)


def score(metric: str, gold: np.ndarray, preds: np.ndarray) -> float:
    """``accuracy`` and ``exact_match`` (a causal LM's hits against gold 1) are the share
    of predictions equal to gold; ``f1`` and ``mcc`` are sklearn's."""
    if len(gold) == 0:
        return float("nan")
    if metric in ("accuracy", "exact_match"):
        return float((gold == preds).mean())
    from sklearn.metrics import f1_score, matthews_corrcoef

    if metric == "f1":
        return float(f1_score(gold, preds, average="binary" if gold.max() <= 1 else "macro"))
    return float(matthews_corrcoef(gold, preds))


@dataclass(frozen=True)
class FlopProbe:
    """Examples FLOPs are counted on, each its own batch of one without padding (model
    inputs only), and the units (tokens, images) they hold together."""

    examples: list[dict[str, torch.Tensor]]
    units: int


class TaskType(abc.ABC):
    """One kind of task: what its inputs are and how a model reads and is scored on them.

    Example::

        @register_task_type
        class ImageClassification(TaskType):
            name = "image-classification"
            flop_unit = "image"
            ...
    """

    name: ClassVar[str]
    #: What adapter FLOPs are reported per (``adapter_flops_per_<unit>``): "token" or "image".
    flop_unit: ClassVar[str]
    #: ``TaskSpec`` fields that only some types read, and which of them this one does;
    #: a hypothesis that sets one its type ignores is refused at that field's line.
    TYPE_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"max_length", "text_column", "label_column", "prompt_column", "completion_column"}
    )
    own_fields: ClassVar[frozenset[str]] = frozenset()
    #: The values of ``task.metric`` this type can report (the first is the default);
    #: another is refused at the metric's line.
    metrics: ClassVar[tuple[str, ...]] = ("accuracy", "f1", "mcc")
    #: What ``peft``'s ``task_type`` should be for this type's models (``BuildContext.
    #: peft_task_type``): ``"SEQ_CLS"`` wraps with a class that expects ``input_ids``;
    #: ``None`` is peft's plain ``PeftModel``, which passes every input through.
    peft_task_type: ClassVar[str | None] = None
    #: Examples (for ``--help`` and error messages) of model and dataset references.
    model_examples: ClassVar[str] = ""
    dataset_examples: ClassVar[str] = ""

    # -- spec stage: cheap, no torch ---------------------------------------------------
    @abc.abstractmethod
    def model_ref_problem(self, ref: str) -> str | None:
        """What is wrong with ``ref`` as a model of this type, syntactically; None if nothing."""

    @abc.abstractmethod
    def dataset_ref_problem(self, ref: str) -> str | None:
        """What is wrong with ``ref`` as a dataset of this type, syntactically; None if nothing."""

    def data_file_issues(self, tasks: list[tuple[TaskSpec, LocatedYaml]], base_dir: Path) -> list[SpecIssue]:
        """Problems of the local data these tasks name (read at the spec stage)."""
        return []

    # -- the driver: data, once per run -------------------------------------------------
    @abc.abstractmethod
    def cache_fields(self, task: TaskSpec, base_dir: Path) -> dict[str, Any]:
        """Everything the prepared arrays depend on (hashed into the cache file's name)."""

    @abc.abstractmethod
    def prepare(self, task: TaskSpec, base_dir: Path) -> PreparedTask:
        """The task's splits as compact arrays."""

    #: Names of each split's arrays in the cache (``{split}_{part}``).
    array_parts: ClassVar[tuple[str, ...]]

    @abc.abstractmethod
    def split_arrays(self, split: Any) -> dict[str, np.ndarray]:
        """A split's arrays by part name (``array_parts``)."""

    @abc.abstractmethod
    def split_from_arrays(self, parts: dict[str, np.ndarray]) -> Any:
        """The split ``split_arrays`` gave these parts of."""

    @abc.abstractmethod
    def split_problem(self, parts: dict[str, np.ndarray], num_labels: int) -> str | None:
        """What makes cached arrays something other than a split of this type; None if nothing."""

    # -- the trial -------------------------------------------------------------------------
    @abc.abstractmethod
    def resolve_model(self, ref: str) -> ModelRef: ...

    @abc.abstractmethod
    def load_model(self, ref: ModelRef, num_labels: int, seed: int) -> nn.Module:
        """The model with its task head, eager attention (FlopCounterMode does not see
        CPU SDPA kernels: METHODS.md section 8), seeded."""

    def default_target_modules(self, model: nn.Module) -> list[str]:
        family = getattr(getattr(model, "config", None), "model_type", "bert")
        return list(DEFAULT_TARGET_MODULES.get(family, ["query", "value"]))

    def head_modules(self, model: nn.Module) -> list[str]:
        """The modules a task class (``*ForSequenceClassification``,
        ``*ForImageClassification``) adds beside its base model: every method trains
        them in full (peft's ``modules_to_save``).

        They are exactly what loading a base checkpoint initialises at random: a base
        checkpoint holds the ``base_model_prefix`` sub-model only, so the wrapper's other
        parameterised children are never in it. Read from transformers 5.24's classes and
        checked by loading a saved base model (``tests/test_tasks.py``):

        - BERT: ``classifier``. The pooler is ``bert.pooler``, part of the base model and
          pretrained (bert-base-uncased's NSP pooler; the embedded MiniLM's
          ``model.safetensors`` holds ``pooler.dense``), so it stays frozen, as in peft's
          and the LoRA papers' GLUE setups.
        - RoBERTa: ``classifier`` (its dense + out_proj; RobertaModel is built without pooler).
        - DeBERTa-v2/v3: ``pooler`` (ContextPooler, absent from the checkpoint) and
          ``classifier``; peft's default ``["classifier", "score"]`` would leave the pooler
          frozen at its random initialisation.
        - DistilBERT: ``pre_classifier`` and ``classifier``. Llama: ``score``.
        - ViT: ``classifier`` (``ViTForImageClassification`` builds ``vit`` without its
          pooler), as peft's image-classification examples' ``modules_to_save``.
        """
        base = getattr(model, "base_model_prefix", None)
        added = [
            name
            for name, child in model.named_children()
            if name != base and next(child.parameters(), None) is not None
        ]
        return added or ["classifier"]

    @abc.abstractmethod
    def batches(
        self,
        data: PreparedTask,
        split: str,
        batch_size: int,
        shuffle_seed: int | None = None,
        by_length: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Training batches (with ``labels``), shuffled by ``shuffle_seed``."""

    @abc.abstractmethod
    def evaluate_split(
        self,
        model: nn.Module,
        data: PreparedTask,
        split: str,
        batch_size: int,
        device: str,
        precision: PrecisionChoice | None = None,
    ) -> SplitOutcome:
        """Every example of ``split``, in eval mode, given back in split order."""

    @abc.abstractmethod
    def flop_probe(self, data: PreparedTask, split: str, examples: int) -> FlopProbe:
        """The first ``examples`` of ``split`` as single unpadded model inputs."""

    def tokens_per_unit(self, model: nn.Module) -> int:
        """Tokens that pass every adapted linear per ``flop_unit`` (1 when the unit is a token):
        the factor that puts the per-token LoRA-r8 reference in this type's unit."""
        return 1
