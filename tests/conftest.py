"""Shared fixtures: tiny models, generated data, a temporary MLflow store."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from orchestrator.execute.ray_session import prepare_ray_environment  # noqa: E402

prepare_ray_environment()  # local Ray on 127.0.0.1 only; must precede any import of ray

TINY_HYPOTHESIS = """\
name: tiny-test
statement: a tiny hypothesis for tests
task:
  model: random:bert-tiny
  dataset: synthetic:polarity
  max_length: 32
  train_examples: 160
  val_examples: 64
  test_examples: 64
arms:
  small: {method: lora, fixed: {r: 2}}
  large: {method: lora, fixed: {r: 8}}
training: {epochs: 1, batch_size: 32, lr: 1.0e-2}
search:
  sampler: tpe
  objectives: {val_accuracy: max}
  trials_per_arm: 2
  max_concurrent: 2
  scheduler: fifo
confirm: {seeds: 2, split: test}
expected:
  - small.flops_ratio <= large.flops_ratio / 2
  - small.test_accuracy >= large.test_accuracy - 0.5
"""


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture
def write_yaml(tmp_path: Path):
    """Write a YAML text (dedented) to tmp_path/name and return its path."""

    def write(text: str, name: str = "hypothesis.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def tiny_hypothesis(write_yaml) -> Path:
    return write_yaml(TINY_HYPOTHESIS)


@pytest.fixture
def tiny_model():
    """A randomly initialised 2-layer BERT, hidden 32 (eager attention)."""
    from orchestrator.tasks.models import load_model, resolve_model

    return load_model(resolve_model("random:bert-tiny"), num_labels=2, seed=0)
