"""Labelled image datasets by reference, split deterministically (image classification).

References a spec may use for ``task.dataset`` when ``task.type`` is image-classification:

- ``embedded:digits`` - scikit-learn's bundled 8x8 handwritten digits (1,797 real
  images, 10 classes, in sklearn's own data folder: no download), grey levels 0..16
  scaled to 0..255.
- ``imagefolder:PATH`` - one sub-folder per class, PNG/JPEG files in it (torchvision's
  ImageFolder and the datasets library's imagefolder layout); class names are the
  folder names, sorted. A relative PATH is resolved from the hypothesis file's folder.
  Checked at the spec stage (``folder_issues``): fewer than 2 classes, an empty class
  folder, an image Pillow cannot read are errors, an image's at its own file.
- a Hugging Face dataset id (``cifar10``) on machines that reach the hub (the ``hub``
  extra's ``datasets``); its first image column, and ``task.label_column``.

Splits: 60/20/20 by a stable hash of each image's bytes (``datasets.stable_bucket``),
as the text datasets split by the text: an image never moves between splits when the
folder grows or files are renamed. Hub datasets keep their test split; validation is
carved from train by the hash of the example's index.

Images are kept as they come (8x8 arrays, files, PIL images) until the task type
resizes them to the model's input size (``image_classification``), after the caps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.tasks.datasets import SPLITS, DatasetUnavailableError, load_hub, stable_bucket

if TYPE_CHECKING:
    from PIL import Image

EMBEDDED_IMAGE_DATASETS = ("embedded:digits",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: An image source: something ``load_image`` turns into a PIL image.
ImageSource = Any  # np.ndarray (H, W) or (H, W, C) uint8 | Path | PIL.Image.Image


@dataclass(frozen=True)
class ImageDataset:
    """Images (as sources) and integer labels per split, plus the label names."""

    splits: dict[str, tuple[list[ImageSource], list[int]]]
    label_names: list[str]


def image_dataset_ref_problem(ref: str) -> str | None:
    """Syntactic check for validation (no file reading, no network)."""
    if ref.startswith("embedded:") and ref not in EMBEDDED_IMAGE_DATASETS:
        return f"unknown embedded image dataset {ref!r}; built in: {', '.join(EMBEDDED_IMAGE_DATASETS)}"
    if ref.startswith(("synthetic:", "csv:", "jsonl:")):
        return f"{ref!r} is a text dataset; image-classification reads embedded:digits, imagefolder:PATH or a hub id"
    if ref.startswith("imagefolder:") and not ref.split(":", 1)[1]:
        return f"{ref!r} needs a path after the colon"
    return None


def image_folder(ref: str, base_dir: Path) -> Path | None:
    """The folder an ``imagefolder:`` reference names (relative to ``base_dir``); None otherwise."""
    if not ref.startswith("imagefolder:") or image_dataset_ref_problem(ref):
        return None
    raw = Path(ref.split(":", 1)[1])
    return raw if raw.is_absolute() else base_dir / raw


def load_image_dataset(ref: str, base_dir: Path, label_column: str = "label") -> ImageDataset:
    """The dataset ``ref`` names, split; ``DatasetUnavailableError`` where it cannot be had,
    ``DataFileError`` for a folder that breaks a rule (the first problem)."""
    if ref == "embedded:digits":
        return _digits()
    if problem := image_dataset_ref_problem(ref):
        raise DatasetUnavailableError(problem)
    folder = image_folder(ref, base_dir)
    if folder is not None:
        return _folder_dataset(folder)
    return _hub_images(ref, label_column)


def image_hash_split(
    sources: list[ImageSource], labels: list[int], keys: list[bytes], names: list[str]
) -> ImageDataset:
    """60/20/20 by the hash of each image's bytes (``keys``); each split in hash order,
    so a cap (the first N) picks the same images whatever the order they came in."""
    out: dict[str, tuple[list[ImageSource], list[int]]] = {s: ([], []) for s in SPLITS}
    digests = [hashlib.sha1(key).hexdigest() for key in keys]
    for index in sorted(range(len(sources)), key=lambda i: (digests[i], labels[i], i)):
        bucket = stable_bucket(digests[index])
        split = "train" if bucket < 60 else "validation" if bucket < 80 else "test"
        out[split][0].append(sources[index])
        out[split][1].append(labels[index])
    return ImageDataset(out, names)


def _digits() -> ImageDataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # a core dependency; only a broken install gets here
        raise DatasetUnavailableError("embedded:digits needs scikit-learn (pip install scikit-learn)") from None
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # grey levels 0..16
    labels = [int(v) for v in digits.target]
    return image_hash_split(list(images), labels, [image.tobytes() for image in images], [str(d) for d in range(10)])


@dataclass(frozen=True)
class FolderProblem:
    """A problem of an image folder: of one image file (``file``), or of the folder as a whole."""

    message: str
    file: Path | None = None


def scan_folder(folder: Path) -> tuple[dict[str, list[Path]], list[FolderProblem]]:
    """Class name -> its image files (sorted), and the problems of the layout and of
    each image (every image is opened by Pillow and verified: header and data)."""
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        return {}, [FolderProblem(f"image folder {folder} {what}")]
    classes = {
        entry.name: sorted(p for p in entry.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        for entry in sorted(folder.iterdir())
        if entry.is_dir() and not entry.name.startswith(".")
    }
    problems: list[FolderProblem] = []
    if len(classes) < 2:
        problems.append(
            FolderProblem(
                f"image folder {folder} has {len(classes)} class folder(s); a classifier needs at least 2 "
                "(one sub-folder per class, its images inside)"
            )
        )
    for name, files in classes.items():
        if not files:
            problems.append(
                FolderProblem(
                    f"class folder {folder / name} holds no image ({', '.join(IMAGE_SUFFIXES)}); "
                    "add its images or remove the folder"
                )
            )
        for path in files:
            if problem := _unreadable(path):
                problems.append(FolderProblem(problem, path))
    return classes, problems


def _unreadable(path: Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        return f"Pillow cannot read this image ({type(exc).__name__}: {str(exc)[:80]}); replace or remove it"
    return None


def _folder_dataset(folder: Path) -> ImageDataset:
    from orchestrator.errors import DataFileError

    classes, problems = scan_folder(folder)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more: orchestrate validate lists them)" if len(problems) > 1 else ""
        raise DataFileError((f"{first.file}: " if first.file else "") + first.message + more)
    names = list(classes)
    sources: list[ImageSource] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        sources += classes[name]
        labels += [label] * len(classes[name])
    return image_hash_split(sources, labels, [path.read_bytes() for path in sources], names)


def load_image(source: ImageSource) -> Image.Image:
    """A PIL image in RGB from any ``ImageSource``."""
    from PIL import Image

    if isinstance(source, Path):
        with Image.open(source) as image:
            return image.convert("RGB")
    if isinstance(source, np.ndarray):
        return Image.fromarray(source).convert("RGB")
    return source.convert("RGB")


def _hub_images(ref: str, label_column: str) -> ImageDataset:
    # NAME[:CONFIG], as for causal LM: image datasets live under an owner (uoft-cs/cifar10)
    name, _, config = ref.partition(":")
    loaded = load_hub(ref, name, config, "embedded:digits or imagefolder:PATH")
    import datasets  # installed: load_hub said what to install otherwise

    features = loaded["train"].features
    image_key = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    label_key = (
        label_column if label_column in features else next((k for k in ("label", "fine_label") if k in features), None)
    )
    if image_key is None or label_key is None:
        raise DatasetUnavailableError(f"dataset {ref!r} has no image column or no column {label_column!r}")
    label_names = list(getattr(features[label_key], "names", [])) or [
        str(v) for v in sorted(set(loaded["train"][label_key]))
    ]

    def part(split: str, keep: Callable[[int], bool] = lambda i: True) -> tuple[list[ImageSource], list[int]]:
        data = loaded[split]
        rows = [i for i in range(len(data)) if keep(i)]
        picked = data.select(rows)
        return list(picked[image_key]), [int(v) for v in picked[label_key]]

    test = "test" if "test" in loaded else "validation"
    if "validation" in loaded and test == "test":
        return ImageDataset(
            {"train": part("train"), "validation": part("validation"), "test": part("test")}, label_names
        )
    return ImageDataset(
        {
            "train": part("train", lambda i: stable_bucket(str(i)) >= 10),
            "validation": part("train", lambda i: stable_bucket(str(i)) < 10),
            "test": part(test),
        },
        label_names,
    )
