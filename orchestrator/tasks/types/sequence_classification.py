"""Sequence classification: a text (token ids) in, a label out. The default type, and
the behaviour every hypothesis had before task types existed, unchanged to the byte.

Models (``text_models``): ``embedded:minilm-l6``, ``random:bert-tiny`` /
``random:bert-h{H}-l{L}``, a folder or a hub id, as ``*ForSequenceClassification``.
Data (``orchestrator.tasks.datasets``): ``embedded:rotten-tomatoes``,
``synthetic:polarity``, ``csv:PATH`` / ``jsonl:PATH``, hub ids. Texts are tokenised
once per run into ragged id arrays (``TokenizedSplit``), batched with dynamic padding;
FLOPs are counted per non-pad token.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.tasks.types import register_task_type
from orchestrator.tasks.types.base import FlopProbe, ModelRef, SplitOutcome, TaskType, dataset_identity
from orchestrator.tasks.types.text_models import is_known_model_ref, load_model, load_tokenizer, resolve_model

if TYPE_CHECKING:
    import torch
    from torch import nn

    from orchestrator.spec.errors import SpecIssue
    from orchestrator.spec.models import TaskSpec
    from orchestrator.spec.yaml_lines import LocatedYaml
    from orchestrator.tasks.prepare import PreparedTask
    from orchestrator.trial.precision import PrecisionChoice

CACHE_VERSION = 1


def batch_order(
    lengths: np.ndarray, batch_size: int, shuffle_seed: int | None = None, by_length: bool = False
) -> np.ndarray:
    """The order examples of these token ``lengths`` are batched in.

    ``shuffle_seed`` shuffles (training). ``by_length`` puts examples of similar
    length together, so dynamic padding pads little: with a seed, transformers'
    ``LengthGroupedSampler`` (what ``Trainer(group_by_length=True)`` uses: shuffled
    mega-batches, each sorted by length); without one, plainly sorted (evaluation,
    where order does not change the result). On the embedded task random batches
    of 32 hold 1.9x as many tokens as the examples; grouped, 1.1x.
    """
    if shuffle_seed is None:
        return np.argsort(lengths, kind="stable") if by_length else np.arange(len(lengths))
    if by_length:
        import torch
        from transformers.trainer_pt_utils import LengthGroupedSampler

        sampler = LengthGroupedSampler(
            batch_size, lengths=lengths.tolist(), generator=torch.Generator().manual_seed(shuffle_seed)
        )
        return np.fromiter(iter(sampler), dtype=np.int64, count=len(lengths))
    order = np.arange(len(lengths))
    np.random.default_rng(shuffle_seed).shuffle(order)
    return order


@dataclass(frozen=True)
class TokenizedSplit:
    """Ragged token ids stored flat (``ids[offsets[i]:offsets[i+1]]`` is example i)."""

    ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return self.offsets[1:] - self.offsets[:-1]

    def order(self, batch_size: int, shuffle_seed: int | None = None, by_length: bool = False) -> np.ndarray:
        """The order examples are batched in (``batch_order``)."""
        return batch_order(self.lengths, batch_size, shuffle_seed, by_length)

    def batches(
        self,
        batch_size: int,
        pad_id: int,
        shuffle_seed: int | None = None,
        by_length: bool = False,
        order: np.ndarray | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Dynamically padded batches, in ``order`` or in ``self.order(...)``."""
        import torch

        if order is None:
            order = self.order(batch_size, shuffle_seed, by_length)
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            lengths = self.offsets[chosen + 1] - self.offsets[chosen]
            input_ids = torch.full((len(chosen), int(lengths.max())), pad_id, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for row, (index, length) in enumerate(zip(chosen, lengths, strict=True)):
                input_ids[row, :length] = torch.from_numpy(
                    self.ids[self.offsets[index] : self.offsets[index] + length].astype(np.int64)
                )
                mask[row, :length] = 1
            yield {
                "input_ids": input_ids,
                "attention_mask": mask,
                "token_type_ids": torch.zeros_like(input_ids),
                "labels": torch.from_numpy(self.labels[chosen].astype(np.int64)),
            }


def non_pad_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["attention_mask"].sum().item())


def unpadded_examples(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Each example of ``batch`` as its own batch of one, padding removed, so that
    FLOPs per token are exact (padding would inflate them)."""
    examples = []
    for row in range(batch["input_ids"].shape[0]):
        length = int(batch["attention_mask"][row].sum())
        examples.append({k: v[row : row + 1, :length] for k, v in batch.items() if v.dim() == 2})
    return examples


@register_task_type
class SequenceClassification(TaskType):
    name = "sequence-classification"
    flop_unit = "token"
    own_fields = frozenset({"max_length", "text_column", "label_column"})
    peft_task_type = "SEQ_CLS"
    model_examples = "embedded:minilm-l6, random:bert-tiny, random:bert-h64-l4, a folder or a hub id"
    dataset_examples = "embedded:rotten-tomatoes, synthetic:polarity, csv:PATH, jsonl:PATH or a hub id"
    array_parts = ("ids", "offsets", "labels")

    # -- spec stage ------------------------------------------------------------------------
    def model_ref_problem(self, ref: str) -> str | None:
        if is_known_model_ref(ref):
            return None
        return f"unknown model {ref!r}; built in: embedded:minilm-l6, random:bert-tiny"

    def dataset_ref_problem(self, ref: str) -> str | None:
        from orchestrator.tasks.datasets import dataset_ref_problem

        return dataset_ref_problem(ref)

    def data_file_issues(self, tasks: list[tuple[TaskSpec, LocatedYaml]], base_dir: Path) -> list[SpecIssue]:
        from orchestrator.tasks.data_checks import data_file_issues

        return data_file_issues(tasks, base_dir)

    # -- data --------------------------------------------------------------------------------
    def cache_fields(self, task: TaskSpec, base_dir: Path) -> dict[str, Any]:
        dataset = dataset_identity(task.dataset, base_dir)
        return {
            "v": CACHE_VERSION,
            "model": task.model,
            "dataset": dataset,
            "max_length": task.max_length,
            "caps": [task.train_examples, task.val_examples, task.test_examples],
            "columns": [task.text_column, task.label_column],
        }

    def prepare(self, task: TaskSpec, base_dir: Path) -> PreparedTask:
        from orchestrator.tasks.datasets import SPLITS, load_dataset
        from orchestrator.tasks.prepare import PreparedTask

        tokenizer = load_tokenizer(resolve_model(task.model))
        caps = {"train": task.train_examples, "validation": task.val_examples, "test": task.test_examples}
        data = load_dataset(task.dataset, base_dir, task.text_column, task.label_column, caps)
        splits = {}
        for name in SPLITS:
            texts, labels = data.splits[name]
            cap = caps[name]
            texts, labels = (texts[:cap], labels[:cap]) if cap else (texts, labels)
            encoded = tokenizer(texts, truncation=True, max_length=task.max_length)["input_ids"]
            lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            flat = np.fromiter((t for ids in encoded for t in ids), dtype=np.int32, count=int(offsets[-1]))
            splits[name] = TokenizedSplit(flat, offsets, np.asarray(labels, dtype=np.int64))
        return PreparedTask(task.model, task.dataset, data.label_names, int(tokenizer.pad_token_id or 0), splits)

    def split_arrays(self, split: TokenizedSplit) -> dict[str, np.ndarray]:
        return {"ids": split.ids, "offsets": split.offsets, "labels": split.labels}

    def split_from_arrays(self, parts: dict[str, np.ndarray]) -> TokenizedSplit:
        return TokenizedSplit(parts["ids"], parts["offsets"], parts["labels"])

    def split_problem(self, parts: dict[str, np.ndarray], num_labels: int) -> str | None:
        ids, offsets, labels = parts["ids"], parts["offsets"], parts["labels"]
        if not all(a.ndim == 1 and np.issubdtype(a.dtype, np.integer) for a in (ids, offsets, labels)):
            return "arrays are not flat integer arrays"
        bounded = len(offsets) == len(labels) + 1 and offsets[0] == 0 and offsets[-1] == len(ids)
        if not bounded or np.any(np.diff(offsets) < 0):
            return f"offsets do not split the {len(ids)} token ids into {len(labels)} examples"
        if len(labels) and (labels.min() < 0 or labels.max() >= num_labels):
            return f"labels outside 0..{num_labels - 1}"
        return None

    # -- the trial ---------------------------------------------------------------------------
    def resolve_model(self, ref: str) -> ModelRef:
        return resolve_model(ref)

    def load_model(self, ref: ModelRef, num_labels: int, seed: int) -> nn.Module:
        return load_model(ref, num_labels, seed)

    def batches(
        self,
        data: PreparedTask,
        split: str,
        batch_size: int,
        shuffle_seed: int | None = None,
        by_length: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        return data.splits[split].batches(batch_size, data.pad_id, shuffle_seed, by_length=by_length)

    def evaluate_split(
        self,
        model: nn.Module,
        data: PreparedTask,
        split: str,
        batch_size: int,
        device: str,
        precision: PrecisionChoice | None = None,
    ) -> SplitOutcome:
        """Batched by length (little padding), given back in split order."""
        from orchestrator.tasks.types.classifier import evaluate_classifier

        tokens = data.splits[split]
        order = tokens.order(batch_size, by_length=True)
        batches = tokens.batches(batch_size, data.pad_id, order=order)
        return evaluate_classifier(model, batches, order, device, precision)

    def flop_probe(self, data: PreparedTask, split: str, examples: int) -> FlopProbe:
        batch = next(data.splits[split].batches(examples, data.pad_id))
        return FlopProbe(unpadded_examples(batch), non_pad_tokens(batch))
