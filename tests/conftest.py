"""Shared fixtures: tiny models, generated data, a temporary MLflow store, and the one
real end-to-end run that the slow e2e modules share (``shared_run``).

Plain helpers (``TINY_HYPOTHESIS``, ``new_mlflow_store``, ``private_copy``...) live in
``helpers.py``; import them from there, not from this file."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from orchestrator.execute.ray_session import prepare_ray_environment

prepare_ray_environment()  # local Ray on 127.0.0.1 only; must precede any import of ray

from helpers import FLAKY_SPACE, SECRETS, SHARED_HYPOTHESIS, TINY_HYPOTHESIS, SharedRun, run_in_folder  # noqa: E402


@pytest.fixture(scope="session")
def shared_ray():
    """One local Ray for the in-process real runs of the session (``ray_session`` joins an
    initialised Ray instead of starting one): each start and shutdown costs seconds.
    Drivers started as subprocesses (test_resume, test_concurrent_runs, test_cluster) start
    their own, as users' drivers do."""
    from orchestrator.execute.ray_session import ray_session

    with ray_session():
        yield


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory, shared_ray) -> SharedRun:
    """The one real run (search, a failing trial, confirmation, judge) of SHARED_HYPOTHESIS,
    with SECRETS set. Read-only for its users: see ``private_copy``."""
    folder = tmp_path_factory.mktemp("shared-run")
    (folder / "flaky.yaml").write_text(FLAKY_SPACE)
    return run_in_folder(folder, "tiny.yaml", SHARED_HYPOTHESIS, SECRETS)


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
