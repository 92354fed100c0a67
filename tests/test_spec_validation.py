"""Spec validation through the Python API and the command line: what the bad-input
corpus cannot say.

Each malformed file, with the exact ``FILE:LINE: field: message`` it must produce, is a
case of ``tests/bad_inputs/`` (run by test_bad_inputs.py): add a new error case there,
not here. This module keeps what a corpus file cannot express: a valid file loading, a
profile asked for by name, ``run`` refusing bad input before Ray or MLflow start, and
the shipped hypotheses' profiles.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.spec.errors import SpecError
from orchestrator.spec.loader import load_hypothesis

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "bad_inputs"


def issues_of(path: Path, profile: str | None = None) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_hypothesis(path, profile)
    return [str(i) for i in info.value.issues]


def test_valid_file_loads(tiny_hypothesis):
    loaded = load_hypothesis(tiny_hypothesis)
    assert loaded.hypothesis.name == "tiny-test"
    assert list(loaded.hypothesis.arms) == ["small", "large"]
    assert len(loaded.sha256) == 64


def test_unknown_profile_requested(tiny_hypothesis):
    (issue,) = issues_of(tiny_hypothesis, "nope")
    assert "no profile 'nope'" in issue


def test_cli_validate_exits_2_without_traceback_and_starts_nothing(tmp_path, capsys, monkeypatch):
    import orchestrator.execute.ray_session

    def no_ray(*args, **kwargs):
        raise AssertionError("bad input reached Ray")

    # the session's shared Ray may be up already (conftest.shared_ray): then "not initialised" proves nothing
    ray_was_up = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    monkeypatch.setattr(orchestrator.execute.ray_session, "ray_session", no_ray)
    monkeypatch.chdir(tmp_path)
    path = CORPUS / "unknown_key_search.yaml"
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"{path}:") and "search.trails_per_arm: unknown key" in captured.err
    assert "Traceback" not in captured.err
    assert main(["run", str(path), "--quiet"]) == 2
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / ".orchestrate").exists()
    assert ray_was_up or "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_cli_validate_ok(tiny_hypothesis, capsys):
    assert main(["validate", str(tiny_hypothesis)]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["plateau", "snell"])
def test_the_shipped_paper_profiles_judge_on_the_held_out_split(name):
    path = ROOT / "hypotheses" / f"{name}.yaml"
    assert load_hypothesis(path, "paper").hypothesis.confirm.split == "test"


def test_a_profile_that_changes_the_task_type_replaces_the_whole_task(tiny_hypothesis):
    """A text file's ``max_length`` is refused on an image task; a profile that moves the
    hypothesis to images gives its task whole (``apply_profile``), while a profile of the
    same type still merges field by field."""
    text = tiny_hypothesis.read_text()
    assert "max_length" in text and "profiles:" not in text
    tiny_hypothesis.write_text(
        text
        + "profiles:\n"
        + "  images:\n"
        + "    task: {type: image-classification, model: random:vit-tiny, dataset: embedded:digits}\n"
        + "  shorter:\n"
        + "    task: {max_length: 16}\n"
    )
    images = load_hypothesis(tiny_hypothesis, "images").hypothesis.task
    assert (images.type, images.model, images.dataset) == (
        "image-classification",
        "random:vit-tiny",
        "embedded:digits",
    )
    assert "max_length" not in images.model_fields_set
    base = load_hypothesis(tiny_hypothesis).hypothesis.task
    shorter = load_hypothesis(tiny_hypothesis, "shorter").hypothesis.task
    assert shorter.max_length == 16 and (shorter.model, shorter.dataset) == (base.model, base.dataset)
