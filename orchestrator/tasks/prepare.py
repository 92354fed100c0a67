"""Prepare a task once (tokenise texts, resize images), cache it, and hand trials
compact arrays.

Trials never tokenise or decode images: the driver does it once per (model, dataset,
max_length, caps) and ships the arrays to trials through Ray's object store, so every
node of a cluster gets them without a shared path. What the arrays are is the task
type's (``orchestrator.tasks.types``: ``prepare``, ``split_arrays``); the on-disk
cache is this module's: ``.npz`` (no pickle), keyed by a hash of everything the arrays
depend on (the type's ``cache_fields``).

It is only a cache: one that cannot be read (cut short, a bit flipped), or that reads
but does not hold what a prepared task is (for text: offsets that go back or end
elsewhere than the ids do; labels out of step; a checksum that does not match its
arrays), is rebuilt, with a warning naming the file; it never fails a run and is never
used as it is.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.tasks.datasets import SPLITS
from orchestrator.tasks.types import DEFAULT_TASK_TYPE, get_task_type, task_type_names
from orchestrator.tasks.types.sequence_classification import TokenizedSplit

if TYPE_CHECKING:
    from orchestrator.spec.models import TaskSpec

__all__ = ["CacheDamagedError", "PreparedTask", "TokenizedSplit", "cache_key", "prepare_task"]


@dataclass(frozen=True)
class PreparedTask:
    """A task's splits as its type's arrays (``TokenizedSplit`` for text, ``ImageSplit``
    for images), with what every type needs to read them."""

    model_ref: str
    dataset_ref: str
    label_names: list[str]
    pad_id: int  # the token id text batches are padded with (0 where nothing is padded)
    splits: dict[str, Any]
    task_type: str = DEFAULT_TASK_TYPE

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def sizes(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.splits.items()}


def cache_key(task: TaskSpec, base_dir: Path) -> str:
    fields = get_task_type(task.type).cache_fields(task, base_dir)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def prepare_task(
    task: TaskSpec, base_dir: Path, cache_dir: Path | None = None, warn: Callable[[str], None] | None = None
) -> PreparedTask:
    """The task prepared by its type, from ``cache_dir`` when a sound cache is there. A damaged
    cache is rebuilt; ``warn`` (default: ``warnings.warn``) is told which and why."""
    key = cache_key(task, base_dir)
    cache_file = cache_dir / f"task-{key}.npz" if cache_dir else None
    if cache_file is not None and cache_file.exists():
        try:
            return _load_cache(cache_file)
        except CacheDamagedError as exc:
            (warn or warnings.warn)(f"{cache_file}: tokenised cache not used ({exc}); rebuilding it")
    prepared = get_task_type(task.type).prepare(task, base_dir)
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
    task_type = get_task_type(task.task_type)
    arrays = {
        f"{name}_{part}": array
        for name, split in task.splits.items()
        for part, array in task_type.split_arrays(split).items()
    }
    meta = {
        "task_type": task.task_type,
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
    task_type = get_task_type(meta["task_type"])
    splits = {
        name: task_type.split_from_arrays({part: arrays[f"{name}_{part}"] for part in task_type.array_parts})
        for name in SPLITS
    }
    return PreparedTask(
        meta["model_ref"], meta["dataset_ref"], meta["label_names"], meta["pad_id"], splits, meta["task_type"]
    )


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
    meta.setdefault("task_type", DEFAULT_TASK_TYPE)  # written before task types: text
    if meta["task_type"] not in task_type_names():
        return f"meta task_type {str(meta['task_type'])[:40]!r} is not a task type"
    return None


def _arrays_problem(arrays: dict[str, np.ndarray], meta: dict) -> str | None:
    """What makes the arrays something other than the prepared splits they were."""
    task_type = get_task_type(meta["task_type"])
    expected = {f"{name}_{part}" for name in SPLITS for part in task_type.array_parts}
    if set(arrays) != expected:
        return f"arrays {sorted(set(arrays) ^ expected)} missing or unexpected"
    if _arrays_checksum(arrays) != meta["sha256"]:
        return "its arrays do not match their checksum"
    for name in SPLITS:
        parts = {part: arrays[f"{name}_{part}"] for part in task_type.array_parts}
        if problem := task_type.split_problem(parts, len(meta["label_names"])):
            return f"{name}: {problem}"
    return None


def _arrays_checksum(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over every array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
