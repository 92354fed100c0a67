"""Nothing in a hypothesis is executed, unpickled or imported, and no secret from the
environment reaches MLflow.

- YAML is loaded safely: Python tags are refused, never constructed.
- A method is a *name* looked up in the registry (or the ``orchestrate.methods``
  entry-point group), never an import path.
- A search-space path is only ever read as YAML (``/dev/zero``, FIFOs and folders are not
  read at all); claims and constraints are parsed, never evaluated.
- A real run with secrets in the environment leaves none of them (values or names) in
  any param, tag, metric name or artifact of the MLflow store.
"""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import EntryPoint
from pathlib import Path
from urllib.parse import urlparse

import pytest

from helpers import SECRETS, TINY_HYPOTHESIS, new_mlflow_store
from orchestrator.spec.errors import SpecError
from orchestrator.spec.loader import load_hypothesis

SENTINEL_CODE = "import pathlib; pathlib.Path({path!r}).write_text('pwned')"


def issues_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_hypothesis(path)
    return [str(i) for i in info.value.issues]


def replaced(old: str, new: str, text: str = TINY_HYPOTHESIS) -> str:
    assert old in text, old
    return text.replace(old, new)


# -- YAML ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        "!!python/object/apply:os.system ['touch {s}']",
        "!!python/object/apply:subprocess.check_call [['touch', '{s}']]",
        "!!python/object/new:subprocess.Popen [['touch', '{s}']]",
        "!!python/name:os.system ''",
        "!!python/module:os ''",
        "!!python/object:argparse.Namespace {{x: 1}}",
    ],
)
@pytest.mark.parametrize("where", ["hypothesis", "space"])
def test_python_tags_are_refused_and_never_constructed(payload, where, tmp_path):
    sentinel = tmp_path / "pwned"
    value = payload.format(s=sentinel)
    if where == "hypothesis":
        text = replaced("  dataset: synthetic:polarity", f"  dataset: {value}")
    else:
        (tmp_path / "space.yaml").write_text(f"params:\n  r: {value}\n")
        text = replaced("small: {method: lora,", "small: {method: lora, space: space.yaml,")
    (tmp_path / "h.yaml").write_text(text)
    (issue,) = issues_of(tmp_path / "h.yaml")
    assert "cannot read value" in issue
    assert not sentinel.exists()


# -- methods ----------------------------------------------------------------------------


@pytest.fixture
def evil_module(tmp_path, monkeypatch):
    """An importable module that leaves a file behind if anything imports it."""
    sentinel = tmp_path / "imported"
    (tmp_path / "evil_plugin.py").write_text(
        SENTINEL_CODE.format(path=str(sentinel)) + "\nclass Evil: name = 'evil'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield sentinel
    sys.modules.pop("evil_plugin", None)


@pytest.mark.parametrize(
    "method",
    [
        "evil_plugin",
        "evil_plugin:Evil",
        "evil_plugin.Evil",
        "os.system",
        "methods.base:Method",
        "__import__('evil_plugin')",
        "../evil_plugin",
        "methods.lora",
        "lora; import evil_plugin",
    ],
)
def test_a_method_is_a_name_never_an_import(method, evil_module, tmp_path):
    path = tmp_path / "h.yaml"
    path.write_text(replaced("small: {method: lora,", f"small: {{method: {json.dumps(method)},"))
    (issue,) = issues_of(path)
    assert f"arms.small.method: unknown method {method!r}" in issue
    assert not evil_module.exists() and "evil_plugin" not in sys.modules


def test_plugins_come_only_from_the_orchestrate_methods_entry_point_group(evil_module, tmp_path, monkeypatch):
    import methods

    (tmp_path / "toy_plugin.py").write_text(
        "from methods.base import Method, MethodConfig\n"
        "class Toy(Method):\n    name = 'toy_plugin_method'\n    Config = MethodConfig\n"
        "    def build(self, model, ctx):\n        return model\n"
    )
    installed = [
        EntryPoint("toy_plugin_method", "toy_plugin:Toy", "orchestrate.methods"),
        EntryPoint("evil", "evil_plugin:Evil", "console_scripts"),  # another group: never a method
    ]
    groups_asked = []

    def fake_entry_points(*, group):
        groups_asked.append(group)
        return [ep for ep in installed if ep.group == group]

    monkeypatch.setattr(methods, "entry_points", fake_entry_points)
    try:
        assert "toy_plugin_method" in methods.available_methods() and "evil" not in methods.available_methods()
        assert methods.get_method("toy_plugin_method").__name__ == "Toy"
        with pytest.raises(methods.UnknownMethodError):
            methods.get_method("evil")
        assert set(groups_asked) == {"orchestrate.methods"}
        assert not evil_module.exists() and "evil_plugin" not in sys.modules
    finally:
        methods._REGISTRY.pop("toy_plugin_method", None)
        sys.modules.pop("toy_plugin", None)


# -- search-space paths -----------------------------------------------------------------


def test_a_space_path_outside_the_project_is_only_read_as_yaml(tmp_path):
    sentinel = tmp_path / "pwned"
    (tmp_path / "payload.py").write_text(f"#!/usr/bin/env python\n{SENTINEL_CODE.format(path=str(sentinel))}\n")
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "h.yaml"
    for space in ["../payload.py", "../../../../../../etc/passwd", "/etc/hostname"]:
        if not (path.parent / space).exists():
            continue
        path.write_text(replaced("small: {method: lora,", f"small: {{method: lora, space: {json.dumps(space)},"))
        issues = issues_of(path)
        assert issues and all(
            "YAML" in i or "must be a mapping" in i or "unknown key" in i or "Input should" in i for i in issues
        ), issues
    assert not sentinel.exists()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "/dev/stdin", "fifo", "folder"])
def test_special_files_are_never_read(special, tmp_path):
    """``/dev/zero`` would fill the memory and a FIFO would block forever."""
    if special == "fifo":
        special = str(tmp_path / "fifo")
        os.mkfifo(special)
    elif special == "folder":
        special = str(tmp_path)
    elif not Path(special).exists():
        pytest.skip(f"{special} does not exist here")
    path = tmp_path / "h.yaml"
    path.write_text(replaced("small: {method: lora,", f"small: {{method: lora, space: {json.dumps(special)},"))
    (issue,) = issues_of(path)
    assert "arms.small.space" in issue and "not a regular file" in issue
    # the hypothesis itself cannot be one either
    with pytest.raises(SpecError, match="not a regular file"):
        load_hypothesis(special)


# -- claims and constraints -------------------------------------------------------------


@pytest.mark.parametrize(
    "field, text",
    [
        ("expected", "__import__('os').system('touch {s}') or small.test_accuracy >= 0"),
        ("expected", "small.test_accuracy >= eval(\"open('{s}', 'w')\")"),
        ("constraints", "__import__('os').system('touch {s}') <= 1"),
        ("constraints", 'all: flops_ratio <= exec(\'open("{s}", "w")\')'),
    ],
)
def test_claims_and_constraints_are_parsed_never_evaluated(field, text, tmp_path):
    sentinel = tmp_path / "pwned"
    value = json.dumps(text.format(s=sentinel))
    if field == "expected":
        spec = replaced("  - small.flops_ratio <= large.flops_ratio / 2", f"  - {value}")
    else:
        spec = replaced("  scheduler: fifo", f"  scheduler: fifo\n  constraints: [{value}]")
    (tmp_path / "h.yaml").write_text(spec)
    (issue,) = issues_of(tmp_path / "h.yaml")
    assert (field == "expected" and "column" in issue) or (
        field == "constraints" and "is not 'metric <= number'" in issue
    )
    assert not sentinel.exists()


# -- secrets ----------------------------------------------------------------------------

# SECRETS (helpers.py): set in the environment during the session's shared real run


def _leaks(text: str) -> list[str]:
    return [s for pair in SECRETS.items() for s in pair if s in text]


def test_the_tracker_redacts_secret_environment_values(tmp_path, monkeypatch):
    """Defence in depth: even a value that carries a secret is redacted on its way in."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import REDACTED, Tracker

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SHORT_TOKEN", "1")  # too short to be told from ordinary text
    monkeypatch.chdir(tmp_path)
    uri = new_mlflow_store(tmp_path)
    tracker = Tracker(uri)
    secret = SECRETS["HF_TOKEN"]
    run = tracker.start_run(tracker.experiment_id("redaction"), f"run {secret}", {"t": f"x{secret}x"})
    tracker.log_params(run, {"path": f"/home/{secret}/model", f"k{secret}": 1, "plain": "1"})
    tracker.set_tags(run, {"error": f"token={SECRETS['DB_PASSWORD']}"})
    tracker.log_metrics(run, {f"m_{SECRETS['MY_API_KEY']}": 1.0})
    tracker.log_text(run, f"AWS={SECRETS['AWS_SECRET_ACCESS_KEY']}\n", "error.txt")
    tracker.end_run(run)
    data = MlflowClient(uri).get_run(run).data
    everything = json.dumps([data.params, data.tags, list(data.metrics)])
    everything += Path(MlflowClient(uri).download_artifacts(run, "error.txt", str(tmp_path))).read_text()
    assert _leaks(everything) == []
    assert data.params["path"] == f"/home/{REDACTED}/model" and data.params["plain"] == "1"
    assert data.tags["error"] == f"token={REDACTED}"


@pytest.fixture(scope="module")
def run_with_secrets(shared_run):
    """The session's shared real run (search, a failing trial, confirmation, judge; conftest.py),
    which ran with SECRETS set in its environment, from its own folder."""
    return shared_run.exit_code, shared_run.uri, shared_run.folder


@pytest.mark.slow
@pytest.mark.e2e
def test_no_secret_reaches_mlflow(run_with_secrets, tmp_path):
    from mlflow.tracking import MlflowClient

    code, uri, folder = run_with_secrets
    assert code == 0
    client = MlflowClient(uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id], max_results=5000)]
    assert len(runs) >= 1 + 3 + 9 + 6  # hypothesis, arms, trials, confirmations
    assert any(r.info.status == "FAILED" for r in runs)  # a failing trial's error.txt is scanned too
    texts, artifacts = [], 0
    for run in runs:
        texts.append(json.dumps([run.info.run_name, run.data.params, run.data.tags, list(run.data.metrics)]))
        pending = [a for a in client.list_artifacts(run.info.run_id)]
        while pending:
            item = pending.pop()
            if item.is_dir:
                pending += client.list_artifacts(run.info.run_id, item.path)
                continue
            local = client.download_artifacts(run.info.run_id, item.path, str(tmp_path))
            texts.append(Path(local).read_bytes().decode("utf-8", "replace"))
            artifacts += 1
    assert artifacts >= 4  # spec, plan.json, expected.txt, verdicts.json, error.txt...
    leaks = {leak for text in texts for leak in _leaks(text)}
    assert leaks == set(), f"secrets in MLflow: {leaks}"
    # and in the raw store: the sqlite file and every artifact file on disk
    roots = {Path(urlparse(r.info.artifact_uri).path) for r in runs if r.info.artifact_uri.startswith(("file:", "/"))}
    raw = [folder / "mlflow.db", *[p for root in roots for p in root.rglob("*") if p.is_file()]]
    assert len(raw) > artifacts
    print(f"scanned {len(runs)} runs, {artifacts} artifacts, {len(raw)} raw files for {len(SECRETS)} secrets")
    for path in raw:
        data = path.read_bytes()
        assert not [s for pair in SECRETS.items() for s in pair if s.encode() in data], path
