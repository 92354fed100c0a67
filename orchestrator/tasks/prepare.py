"""Tokenise a task once, cache it, and hand trials compact arrays.

Trials never tokenise: the driver does it once per (model, dataset, max_length, caps)
and ships the arrays to trials through Ray's object store, so every node of a cluster
gets them without a shared path. The on-disk cache is ``.npz`` (no pickle), keyed by
a hash of everything the arrays depend on.

It is only a cache: one that cannot be read (cut short, a bit flipped), or that reads
but does not hold what a tokenised task is (offsets that go back or end elsewhere than
the ids do, labels out of step, a checksum that does not match its arrays), is rebuilt,
with a warning naming the file; it never fails a run and is never used as it is.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from orchestrator.tasks.datasets import SPLITS, load_dataset
from orchestrator.tasks.models import load_tokenizer, resolve_model

if TYPE_CHECKING:
    import torch

    from orchestrator.spec.models import TaskSpec

CACHE_VERSION = 1


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
        """The order examples are batched in.

        ``shuffle_seed`` shuffles (training). ``by_length`` puts examples of similar
        length together, so dynamic padding pads little: with a seed, transformers'
        ``LengthGroupedSampler`` (what ``Trainer(group_by_length=True)`` uses: shuffled
        mega-batches, each sorted by length); without one, plainly sorted (evaluation,
        where order does not change the result). On the embedded task random batches
        of 32 hold 1.9x as many tokens as the examples; grouped, 1.1x.
        """
        if shuffle_seed is None:
            return np.argsort(self.lengths, kind="stable") if by_length else np.arange(len(self))
        if by_length:
            import torch
            from transformers.trainer_pt_utils import LengthGroupedSampler

            sampler = LengthGroupedSampler(
                batch_size, lengths=self.lengths.tolist(), generator=torch.Generator().manual_seed(shuffle_seed)
            )
            return np.fromiter(iter(sampler), dtype=np.int64, count=len(self))
        order = np.arange(len(self))
        np.random.default_rng(shuffle_seed).shuffle(order)
        return order

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


@dataclass(frozen=True)
class PreparedTask:
    model_ref: str
    dataset_ref: str
    label_names: list[str]
    pad_id: int
    splits: dict[str, TokenizedSplit]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def sizes(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.splits.items()}


def cache_key(task: TaskSpec, base_dir: Path) -> str:
    dataset = task.dataset
    if dataset.startswith(("csv:", "jsonl:")):
        kind, raw = dataset.split(":", 1)
        path = Path(raw) if Path(raw).is_absolute() else base_dir / raw
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing"
        dataset = f"{kind}:{path.resolve()}:{digest}"
    fields = {
        "v": CACHE_VERSION,
        "model": task.model,
        "dataset": dataset,
        "max_length": task.max_length,
        "caps": [task.train_examples, task.val_examples, task.test_examples],
        "columns": [task.text_column, task.label_column],
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def prepare_task(
    task: TaskSpec, base_dir: Path, cache_dir: Path | None = None, warn: Callable[[str], None] | None = None
) -> PreparedTask:
    """The task tokenised, from ``cache_dir`` when a sound cache is there. A damaged
    cache is rebuilt; ``warn`` (default: ``warnings.warn``) is told which and why."""
    key = cache_key(task, base_dir)
    cache_file = cache_dir / f"task-{key}.npz" if cache_dir else None
    if cache_file is not None and cache_file.exists():
        try:
            return _load_cache(cache_file)
        except CacheDamagedError as exc:
            (warn or warnings.warn)(f"{cache_file}: tokenised cache not used ({exc}); rebuilding it")
    model_ref = resolve_model(task.model)
    tokenizer = load_tokenizer(model_ref)
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
    prepared = PreparedTask(task.model, task.dataset, data.label_names, int(tokenizer.pad_token_id or 0), splits)
    if cache_file is not None:
        try:
            _save_cache(cache_file, prepared)
        except OSError as exc:
            (warn or warnings.warn)(
                f"{cache_file}: cannot write the tokenised cache ({exc.strerror or exc}); going on without it"
            )
    return prepared


class CacheDamagedError(ValueError):
    """A cache file that cannot be used as it is (the reason is the message)."""


def _save_cache(path: Path, task: PreparedTask) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, split in task.splits.items():
        arrays[f"{name}_ids"], arrays[f"{name}_offsets"], arrays[f"{name}_labels"] = (
            split.ids,
            split.offsets,
            split.labels,
        )
    meta = {
        "model_ref": task.model_ref,
        "dataset_ref": task.dataset_ref,
        "label_names": task.label_names,
        "pad_id": task.pad_id,
        "sha256": _arrays_checksum(arrays),
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    tmp = path.with_suffix(".tmp.npz")
    # numpy's stub types savez's **kwds as if a key could be its bool allow_pickle; ours are array names
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)  # atomic: a killed driver never leaves half a cache


def _load_cache(path: Path) -> PreparedTask:
    """The cached task, or ``CacheDamagedError``: whatever numpy or zipfile raise on a
    damaged file, a checksum that differs, or arrays that are not a tokenised task."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (
        OSError,
        EOFError,
        KeyError,
        ValueError,
        zipfile.BadZipFile,
    ) as exc:  # ValueError: also bad JSON, bad UTF-8
        raise CacheDamagedError(f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc
    problem = _meta_problem(meta) or _arrays_problem(arrays, meta)
    if problem:
        raise CacheDamagedError(problem)
    splits = {
        name: TokenizedSplit(arrays[f"{name}_ids"], arrays[f"{name}_offsets"], arrays[f"{name}_labels"])
        for name in SPLITS
    }
    return PreparedTask(meta["model_ref"], meta["dataset_ref"], meta["label_names"], meta["pad_id"], splits)


def _meta_problem(meta: object) -> str | None:
    if not isinstance(meta, dict):
        return "its meta is not an object"
    if "sha256" not in meta:
        return "written by an earlier version, without a checksum"
    kinds = {"model_ref": str, "dataset_ref": str, "label_names": list, "pad_id": int, "sha256": str}
    for key, kind in kinds.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            return f"meta {key} is missing or not a {kind.__name__}"
    if len(meta["label_names"]) < 2 or not all(isinstance(name, str) for name in meta["label_names"]):
        return "meta label_names is not a list of two or more names"
    return None


def _arrays_problem(arrays: dict[str, np.ndarray], meta: dict) -> str | None:
    """What makes the arrays something other than the tokenised splits they were."""
    expected = {f"{name}_{part}" for name in SPLITS for part in ("ids", "offsets", "labels")}
    if set(arrays) != expected:
        return f"arrays {sorted(set(arrays) ^ expected)} missing or unexpected"
    if _arrays_checksum(arrays) != meta["sha256"]:
        return "its arrays do not match their checksum"
    for name in SPLITS:
        ids, offsets, labels = arrays[f"{name}_ids"], arrays[f"{name}_offsets"], arrays[f"{name}_labels"]
        if not all(a.ndim == 1 and np.issubdtype(a.dtype, np.integer) for a in (ids, offsets, labels)):
            return f"{name}: arrays are not flat integer arrays"
        if (
            len(offsets) != len(labels) + 1
            or offsets[0] != 0
            or offsets[-1] != len(ids)
            or np.any(np.diff(offsets) < 0)
        ):
            return f"{name}: offsets do not split the {len(ids)} token ids into {len(labels)} examples"
        if len(labels) and (labels.min() < 0 or labels.max() >= len(meta["label_names"])):
            return f"{name}: labels outside 0..{len(meta['label_names']) - 1}"
    return None


def _arrays_checksum(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over every array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
