"""Image classification (task.type image-classification): data, checks, FLOPs per image, a run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from orchestrator.cli import main
from orchestrator.spec.models import TaskSpec, TrainingSpec
from orchestrator.tasks.prepare import prepare_task
from orchestrator.trial.training import TrialSetup, run_trial

ROOT = Path(__file__).resolve().parent.parent
DIGITS = TaskSpec(
    type="image-classification",
    model="random:vit-tiny",
    dataset="embedded:digits",
    train_examples=96,
    val_examples=32,
    test_examples=32,
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return prepare_task(DIGITS, Path("."), tmp_path_factory.mktemp("cache"))


def test_embedded_digits_split_60_20_20_by_a_hash_of_the_image():
    whole = prepare_task(
        DIGITS.model_copy(update={"train_examples": None, "val_examples": None, "test_examples": None}), Path(".")
    )
    sizes = whole.sizes()
    assert sum(sizes.values()) == 1797 and whole.label_names == [str(d) for d in range(10)]
    assert abs(sizes["train"] / 1797 - 0.6) < 0.05 and abs(sizes["test"] / 1797 - 0.2) < 0.05
    for split in whole.splits.values():
        assert set(split.labels.tolist()) == set(range(10))


def test_images_are_cached_as_uint8_at_the_models_size_and_normalised_per_batch(digits, tmp_path):
    train = digits.splits["train"]
    assert train.pixels.dtype == np.uint8 and train.pixels.shape == (96, 3, 32, 32)
    batch = next(iter(train.batches(8)))
    expected = (train.pixels[:8].astype(np.float32) / 255 - 0.5) / 0.5
    assert np.allclose(batch["pixel_values"].numpy(), expected) and set(batch) == {"pixel_values", "labels"}
    again = prepare_task(DIGITS, Path("."), tmp_path)
    reread = prepare_task(DIGITS, Path("."), tmp_path)
    assert (
        reread.splits["test"].pixels == again.splits["test"].pixels
    ).all() and reread.task_type == "image-classification"


def test_a_damaged_image_cache_is_rebuilt_with_a_warning(tmp_path):
    prepare_task(DIGITS, Path("."), tmp_path)
    cache = next(tmp_path.glob("task-*.npz"))
    cache.write_bytes(cache.read_bytes()[:-100])
    notes: list[str] = []
    rebuilt = prepare_task(DIGITS, Path("."), tmp_path, warn=notes.append)
    assert rebuilt.sizes() == {"train": 96, "validation": 32, "test": 32}
    assert len(notes) == 1 and "cache not used" in notes[0]


def test_lora_r8_is_the_flop_reference_per_image(digits, tmp_path):
    """adapter FLOPs per image = the per-token LoRA-r8 formula x (16 patches + CLS)."""
    setup = TrialSetup(
        arm="a",
        method="lora",
        model="random:vit-tiny",
        metric="accuracy",
        training=TrainingSpec(epochs=1, batch_size=32),
        fixed={"r": 8},
    )
    final = run_trial(setup, {"lr": 1e-2}, 0, digits, lambda m, a: None, tmp_path)
    per_token = 2 * 8 * (32 + 32) * 4  # q_proj and v_proj of 2 blocks, hidden 32
    assert final["adapter_flops_per_image"] == per_token * 17
    assert final["flops_ratio"] == 1.0 and "adapter_flops_per_token" not in final
    assert 0.0 <= final["val_accuracy"] <= 1.0 and final["head_params"] == 32 * 10 + 10


# -- imagefolder:PATH ---------------------------------------------------------------------------
def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(path)


def _hypothesis(folder: Path, dataset: str) -> Path:
    path = folder / "h.yaml"
    path.write_text(
        "name: images\nstatement: reads an image folder\ntask:\n  type: image-classification\n"
        f"  model: random:vit-tiny\n  dataset: {dataset}\narms:\n  a: {{method: lora}}\n  b: {{method: dora}}\n"
    )
    return path


def test_an_image_folder_loads_its_classes_in_name_order(tmp_path):
    for label, name in enumerate(["cat", "dog"]):
        for i in range(10):
            _png(tmp_path / "data" / name / f"{i}.png", 20 * i + label)
    assert main(["validate", str(_hypothesis(tmp_path, "imagefolder:data"))]) == 0
    task = TaskSpec(type="image-classification", model="random:vit-tiny", dataset="imagefolder:data")
    data = prepare_task(task, tmp_path)
    assert data.label_names == ["cat", "dog"] and sum(data.sizes().values()) == 20


def test_a_bad_image_folder_is_refused_at_the_folder_and_at_the_image(tmp_path, capsys):
    _png(tmp_path / "data" / "cat" / "0.png", 1)
    (tmp_path / "data" / "dog").mkdir()
    (tmp_path / "data" / "cat" / "broken.png").write_bytes(b"not a png")
    hypothesis = _hypothesis(tmp_path, "imagefolder:data")
    assert main(["validate", str(hypothesis)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert f"{hypothesis}:6: task.dataset: class folder {tmp_path / 'data' / 'dog'} holds no image" in "\n".join(err)
    assert any(
        line.startswith(f"{tmp_path / 'data' / 'cat' / 'broken.png'}: Pillow cannot read this image") for line in err
    )


def test_an_image_folder_with_one_class_is_refused(tmp_path, capsys):
    _png(tmp_path / "data" / "cat" / "0.png", 1)
    hypothesis = _hypothesis(tmp_path, "imagefolder:data")
    assert main(["validate", str(hypothesis)]) == 2
    assert "has 1 class folder(s); a classifier needs at least 2" in capsys.readouterr().err


# -- end to end ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_vit_digits_smoke_profile_runs_end_to_end_with_verdicts(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "run",
            str(ROOT / "hypotheses" / "vit_digits.yaml"),
            "--profile",
            "smoke",
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,  # the report lands in the cwd
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dora.test_accuracy >= lora.test_accuracy" in result.stdout + result.stderr
