"""Image classification: an image in, a label out (ViT and other ``*ForImageClassification``).

Models: ``random:vit-tiny`` (a randomly initialised ViT built in code: image 32, patch
8, hidden 32, 2 layers, for tests and smoke runs) or ``random:vit-h{H}-l{L}``; a local
folder or a hub id (``google/vit-base-patch16-224-in21k``) through
``AutoModelForImageClassification`` with ``num_labels``, eager attention. No pretrained
ViT is embedded: offline, the random ViTs are what runs.

Data (``orchestrator.tasks.image_data``): ``embedded:digits``, ``imagefolder:PATH``, hub
ids. Each image is resized once per run to the model's ``image_size`` (bilinear, RGB)
and cached as uint8 ``[N, C, H, W]``; batches are scaled to 0..1 and normalised with
the model's image processor's mean and std (random models: 0.5 and 0.5, ViT's).

FLOPs are reported per image (``adapter_flops_per_image``). A ViT runs every adapted
linear on each of its (image_size / patch)^2 patch tokens plus the CLS token, so the
LoRA-r8 reference per image is its per-token cost times that many tokens
(``tokens_per_unit``); ``flops_ratio`` is the same ratio per token or per image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.tasks.types import register_task_type
from orchestrator.tasks.types.base import FlopProbe, ModelRef, ModelUnavailableError, SplitOutcome, TaskType
from orchestrator.tasks.types.base import random_model_ref as _random_ref

if TYPE_CHECKING:
    import torch
    from torch import nn

    from orchestrator.spec.errors import SpecIssue
    from orchestrator.spec.models import TaskSpec
    from orchestrator.spec.yaml_lines import LocatedYaml
    from orchestrator.tasks.prepare import PreparedTask
    from orchestrator.trial.precision import PrecisionChoice

CACHE_VERSION = 1
#: The random ViTs' input: 32x32 RGB in 8x8 patches (16 patch tokens + CLS).
RANDOM_IMAGE_SIZE, RANDOM_PATCH_SIZE = 32, 8
#: ViT's own normalisation (``ViTImageProcessor``: mean = std = 0.5 per channel).
RANDOM_MEAN_STD = (0.5, 0.5)


@dataclass(frozen=True)
class ImageSplit:
    """Images resized to the model's input as uint8 ``[N, C, H, W]``, their labels, and
    the per-channel mean and std batches are normalised with."""

    pixels: np.ndarray
    labels: np.ndarray
    mean: np.ndarray  # float32 [C]
    std: np.ndarray  # float32 [C]

    def __len__(self) -> int:
        return len(self.labels)

    def order(self, shuffle_seed: int | None = None) -> np.ndarray:
        order = np.arange(len(self))
        if shuffle_seed is not None:
            np.random.default_rng(shuffle_seed).shuffle(order)
        return order

    def batches(
        self, batch_size: int, shuffle_seed: int | None = None, order: np.ndarray | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        import torch

        if order is None:
            order = self.order(shuffle_seed)
        mean = torch.from_numpy(self.mean.astype(np.float32)).view(1, -1, 1, 1)
        std = torch.from_numpy(self.std.astype(np.float32)).view(1, -1, 1, 1)
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            pixels = torch.from_numpy(self.pixels[chosen]).float().div_(255.0)
            yield {
                "pixel_values": (pixels - mean) / std,
                "labels": torch.from_numpy(self.labels[chosen].astype(np.int64)),
            }


@dataclass(frozen=True)
class InputFormat:
    """What the model reads: square images of ``size`` with ``channels``, normalised so."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def random_vit_ref(ref: str) -> ModelRef | None:
    return _random_ref(ref, "vit")


@register_task_type
class ImageClassification(TaskType):
    name = "image-classification"
    flop_unit = "image"
    own_fields = frozenset({"label_column"})
    peft_task_type = None
    model_examples = "random:vit-tiny, random:vit-h64-l4, a folder or a hub id (google/vit-base-patch16-224-in21k)"
    dataset_examples = "embedded:digits, imagefolder:PATH or a hub id (cifar10)"
    array_parts = ("pixels", "labels", "mean", "std")

    # -- spec stage ------------------------------------------------------------------------
    def model_ref_problem(self, ref: str) -> str | None:
        if random_vit_ref(ref) is not None or not ref.startswith(("embedded:", "random:")):
            return None
        return (
            f"{ref!r} is not an image model; image-classification takes {self.model_examples} "
            "(no pretrained ViT is embedded: offline, use a random:vit model)"
        )

    def dataset_ref_problem(self, ref: str) -> str | None:
        from orchestrator.tasks.image_data import image_dataset_ref_problem

        return image_dataset_ref_problem(ref)

    def data_file_issues(self, tasks: list[tuple[TaskSpec, LocatedYaml]], base_dir: Path) -> list[SpecIssue]:
        """An ``imagefolder:`` folder's problems: of the folder at the hypothesis line that
        names it (``task.dataset``), of an image at that image's file. Each folder once."""
        from orchestrator.spec.errors import SpecIssue
        from orchestrator.tasks.image_data import image_folder, scan_folder

        issues, seen = [], set()
        for task, located in tasks:
            folder = image_folder(task.dataset, base_dir)
            if folder is None or folder in seen:
                continue
            seen.add(folder)
            for problem in scan_folder(folder)[1]:
                if problem.file is not None:
                    issues.append(SpecIssue(str(problem.file), None, "", problem.message))
                else:
                    issues.append(
                        SpecIssue(located.file, located.line_of(("task", "dataset")), "task.dataset", problem.message)
                    )
        return issues

    # -- data --------------------------------------------------------------------------------
    def cache_fields(self, task: TaskSpec, base_dir: Path) -> dict[str, Any]:
        from orchestrator.tasks.image_data import image_folder

        dataset = task.dataset
        folder = image_folder(dataset, base_dir)
        if folder is not None:  # the folder's listing, sizes and times: a changed image is a new cache
            files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
            stamp = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
            dataset = f"imagefolder:{folder.resolve()}:{_digest(stamp)}"
        return {
            "v": CACHE_VERSION,
            "type": self.name,
            "model": task.model,
            "dataset": dataset,
            "caps": [task.train_examples, task.val_examples, task.test_examples],
            "label_column": task.label_column,
        }

    def prepare(self, task: TaskSpec, base_dir: Path) -> PreparedTask:
        from orchestrator.tasks.datasets import SPLITS
        from orchestrator.tasks.image_data import load_image_dataset
        from orchestrator.tasks.prepare import PreparedTask

        form = self.input_format(self.resolve_model(task.model))
        data = load_image_dataset(task.dataset, base_dir, task.label_column)
        caps = {"train": task.train_examples, "validation": task.val_examples, "test": task.test_examples}
        splits = {}
        for name in SPLITS:
            sources, labels = data.splits[name]
            cap = caps[name]
            sources, labels = (sources[:cap], labels[:cap]) if cap else (sources, labels)
            splits[name] = ImageSplit(
                _resized(sources, form),
                np.asarray(labels, dtype=np.int64),
                np.asarray(form.mean, dtype=np.float32),
                np.asarray(form.std, dtype=np.float32),
            )
        return PreparedTask(task.model, task.dataset, data.label_names, 0, splits, self.name)

    def split_arrays(self, split: ImageSplit) -> dict[str, np.ndarray]:
        return {"pixels": split.pixels, "labels": split.labels, "mean": split.mean, "std": split.std}

    def split_from_arrays(self, parts: dict[str, np.ndarray]) -> ImageSplit:
        return ImageSplit(parts["pixels"], parts["labels"], parts["mean"], parts["std"])

    def split_problem(self, parts: dict[str, np.ndarray], num_labels: int) -> str | None:
        pixels, labels, mean, std = parts["pixels"], parts["labels"], parts["mean"], parts["std"]
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[2] != pixels.shape[3]:
            return "pixels are not uint8 square images [N, C, H, W]"
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) != len(pixels):
            return f"labels are not one integer per image ({len(pixels)} images)"
        if mean.shape != (pixels.shape[1],) or std.shape != mean.shape or not np.all(std > 0):
            return "mean and std are not one value per channel (std > 0)"
        if len(labels) and (labels.min() < 0 or labels.max() >= num_labels):
            return f"labels outside 0..{num_labels - 1}"
        return None

    # -- the trial ---------------------------------------------------------------------------
    def resolve_model(self, ref: str) -> ModelRef:
        random = random_vit_ref(ref)
        if random is not None:
            return random
        if problem := self.model_ref_problem(ref):
            raise ModelUnavailableError(problem)
        return ModelRef(ref, ref)

    def input_format(self, ref: ModelRef) -> InputFormat:
        """The image size, channels and normalisation the model expects (config and
        image processor only: no weights are read)."""
        if ref.path is None:
            return InputFormat(RANDOM_IMAGE_SIZE, 3, (RANDOM_MEAN_STD[0],) * 3, (RANDOM_MEAN_STD[1],) * 3)
        from transformers import AutoConfig, AutoImageProcessor

        try:
            config = AutoConfig.from_pretrained(ref.path)
        except OSError as exc:
            raise _unavailable(ref.ref) from exc
        size, channels = int(config.image_size), int(getattr(config, "num_channels", 3))
        try:
            processor = AutoImageProcessor.from_pretrained(ref.path)
            mean = tuple(float(v) for v in processor.image_mean)
            std = tuple(float(v) for v in processor.image_std)
        except (OSError, AttributeError, ValueError):  # no processor saved: ViT's own values
            mean, std = (RANDOM_MEAN_STD[0],) * channels, (RANDOM_MEAN_STD[1],) * channels
        return InputFormat(size, channels, mean, std)

    def load_model(self, ref: ModelRef, num_labels: int, seed: int) -> nn.Module:
        """A ``*ForImageClassification`` with eager attention, seeded."""
        import torch
        from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification

        torch.manual_seed(seed)
        if ref.path is None:
            config = ViTConfig(  # type: ignore[call-arg]  # num_labels, attn_implementation: PretrainedConfig's
                image_size=RANDOM_IMAGE_SIZE,
                patch_size=RANDOM_PATCH_SIZE,
                num_channels=3,
                hidden_size=ref.hidden,
                num_hidden_layers=ref.layers,
                num_attention_heads=max(1, ref.hidden // 16),
                intermediate_size=ref.hidden * 4,
                num_labels=num_labels,
                attn_implementation="eager",
            )
            return ViTForImageClassification(config)
        try:
            return AutoModelForImageClassification.from_pretrained(
                ref.path, num_labels=num_labels, attn_implementation="eager", ignore_mismatched_sizes=True
            )
        except OSError as exc:
            raise _unavailable(ref.ref) from exc

    def batches(
        self,
        data: PreparedTask,
        split: str,
        batch_size: int,
        shuffle_seed: int | None = None,
        by_length: bool = False,  # every image is the same size: nothing to group
    ) -> Iterator[dict[str, torch.Tensor]]:
        return data.splits[split].batches(batch_size, shuffle_seed)

    def evaluate_split(
        self,
        model: nn.Module,
        data: PreparedTask,
        split: str,
        batch_size: int,
        device: str,
        precision: PrecisionChoice | None = None,
    ) -> SplitOutcome:
        from orchestrator.tasks.types.classifier import evaluate_classifier

        images = data.splits[split]
        order = images.order()
        return evaluate_classifier(model, images.batches(batch_size, order=order), order, device, precision)

    def flop_probe(self, data: PreparedTask, split: str, examples: int) -> FlopProbe:
        """The first images, each a batch of one (images have no padding to remove)."""
        batch = next(data.splits[split].batches(examples))
        pixels = batch["pixel_values"]
        return FlopProbe([{"pixel_values": pixels[i : i + 1]} for i in range(len(pixels))], len(pixels))

    def tokens_per_unit(self, model: nn.Module) -> int:
        """Patch tokens plus CLS: what each adapted linear of a ViT runs on per image. A
        model without patches (a convnet) has no tokens: 1, its ratio is per position."""
        config = getattr(model, "config", None)
        patch = getattr(config, "patch_size", None)
        if not isinstance(patch, int):
            return 1
        return (int(getattr(config, "image_size", patch)) // patch) ** 2 + 1


def _resized(sources: list[Any], form: InputFormat) -> np.ndarray:
    from PIL import Image

    from orchestrator.tasks.image_data import load_image

    out = np.empty((len(sources), form.channels, form.size, form.size), dtype=np.uint8)
    for index, source in enumerate(sources):
        image = load_image(source).resize((form.size, form.size), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
        array = array[..., : form.channels] if form.channels <= 3 else np.repeat(array[..., :1], form.channels, -1)
        out[index] = array.transpose(2, 0, 1)
    return out


def _digest(stamp: list[tuple[str, int, int]]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()


def _unavailable(ref: str) -> ModelUnavailableError:
    from orchestrator.tasks.types.text_models import unavailable

    return unavailable(ref, "random:vit-tiny or random:vit-h64-l4 (random ViTs; no pretrained ViT is embedded)")
