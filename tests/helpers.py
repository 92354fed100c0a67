"""Plain helpers the test modules share: the tiny hypothesis, a fresh MLflow store, and
the shape of the session's one real run (``SharedRun``) with ways to run and copy it.

Import them with ``from helpers import ...``: pytest puts ``tests/`` on ``sys.path``
(rootdir conftest, default "prepend" import mode), as it did for ``from conftest import``.
Fixtures stay in ``conftest.py``; what lives here is ordinary code a test calls, so a
new test module can see where each name comes from. Nothing here imports Ray or MLflow
at import time: ``conftest.py`` prepares Ray's environment first.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

# max_concurrent 1: a trial here trains for a fraction of a second, while each worker process
# Ray Tune starts spends ~10 s of CPU importing torch/transformers/peft; one worker serving
# the trials in turn is as fast on two cores and leaves the other core to the driver.
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
  max_concurrent: 1
  scheduler: fifo
confirm: {seeds: 2, split: test}
expected:
  - small.flops_ratio <= large.flops_ratio / 2
  - small.test_accuracy >= large.test_accuracy - 0.5
"""


# -- the shared real run ------------------------------------------------------------------
# test_e2e, test_rejudge, test_security and test_ui_browser each needed a real run of a tiny
# hypothesis (a minute or two each: every Ray Tune trial actor imports torch/transformers/peft).
# They share this one (conftest's ``shared_run`` fixture runs it), shaped so that every module's assertions hold:
# - arms small and large (TINY_HYPOTHESIS; its two claims are the registered ones), plus an
#   arm `flaky` with the `failing` method (random sampler, 3 trials: a failed trial and a
#   finished one, test_e2e; a FAILED run whose error.txt is scanned, test_security);
# - the SECRETS below in the environment for the whole run (test_security);
# - the working directory is the run's folder, so whatever the run writes under ./ (MLflow's
#   artifacts, reports/) lands there too.
# Modules only read it; one that writes into the store works on a `private_copy(...)`.

FLAKY_SPACE = """\
method: failing
params:
  mode: {type: categorical, choices: [raise, none]}
defaults: {mode: raise}
"""

SHARED_HYPOTHESIS = (
    TINY_HYPOTHESIS.replace(
        "  large: {method: lora, fixed: {r: 8}}\n",
        "  large: {method: lora, fixed: {r: 8}}\n"
        "  flaky: {method: failing, space: flaky.yaml, fixed: {r: 2, when: 1}}\n",
    )
    .replace("trials_per_arm: 2", "trials_per_arm: 3")
    .replace("sampler: tpe", "sampler: random")
)

#: secret-looking environment variables set during the shared run (test_security checks that
#: neither their values nor their names reach MLflow)
SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "aws-5ecret-7f3a9c1e55d2",
    "HF_TOKEN": "hf_tok_0d9b7e3a1c44ee",
    "MY_API_KEY": "apikey-93c1f0aa7b26",
    "DB_PASSWORD": "pa55word-b7e2c90d13",
}


_EMPTY_STORE: list[Path] = []


def new_mlflow_store(folder: Path) -> str:
    """A new, empty MLflow sqlite store at FOLDER/mlflow.db; returns its URI.

    Creating a store runs MLflow's schema migrations (~50 of them: 3-7 s here), which
    each real run of the suite would repeat; the first call makes one empty store and
    every call copies it. The copy is what MLflow itself would have made (same schema,
    the Default experiment, nothing else). test_concurrent_runs does not use it: two
    drivers creating one store at once is part of what it tests."""
    if not _EMPTY_STORE:
        from mlflow.tracking import MlflowClient

        template = Path(tempfile.mkdtemp(prefix="orchestrate-empty-mlflow-")) / "mlflow.db"
        MlflowClient(f"sqlite:///{template}").search_experiments()  # creates and migrates it
        atexit.register(shutil.rmtree, template.parent, True)
        _EMPTY_STORE.append(template)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_EMPTY_STORE[0], folder / "mlflow.db")
    db = sqlite3.connect(folder / "mlflow.db")
    try:  # the Default experiment's artifacts under FOLDER, as a store made in FOLDER has them
        db.execute(
            "UPDATE experiments SET artifact_location = ? WHERE name = 'Default'", (str(folder / "mlruns" / "0"),)
        )
        db.commit()
    finally:
        db.close()
    return f"sqlite:///{folder}/mlflow.db"


@dataclass(frozen=True)
class SharedRun:
    """Where the shared run is: ``orchestrate run SPEC --tracking-uri URI --state-dir STATE_DIR``
    run in FOLDER (which holds all of it: spec, sqlite store, artifacts, state), and its exit
    code. The hypothesis (and so the MLflow experiment) is "tiny-test"."""

    folder: Path
    spec: Path
    uri: str
    state_dir: Path
    exit_code: int


def run_in_folder(folder: Path, spec_name: str, text: str, env: dict[str, str] | None = None) -> SharedRun:
    """``orchestrate run`` of the hypothesis TEXT, written to FOLDER/SPEC_NAME, as a user
    runs it from FOLDER: a new store and the state folder there, ``--quiet``, ENV set."""
    from orchestrator.cli import main

    spec = folder / spec_name
    spec.write_text(text)
    uri = new_mlflow_store(folder)
    state_dir = folder / "state"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        mp.chdir(folder)  # MLflow's artifacts and reports go under the working directory
        code = main(["run", str(spec), "--tracking-uri", uri, "--state-dir", str(state_dir), "--quiet"])
    return SharedRun(folder=folder, spec=spec, uri=uri, state_dir=state_dir, exit_code=code)


def forget_artifact_repos() -> None:
    """Empty MLflow's in-process cache of artifact repositories. It is keyed by run id
    alone, not by store, and a copy of a store has the same run ids: without this, artifacts
    logged to (or read from) the copy would go to the original's folder, or the reverse."""
    from mlflow.tracking._tracking_service import utils

    utils._artifact_repos_cache.clear()


@contextlib.contextmanager
def private_copy(run: SharedRun, dest: Path) -> Iterator[SharedRun]:
    """``copy_shared_run(run, dest)``, with MLflow's run-id keyed artifact cache emptied on
    the way in and out: the store's run ids mean the copy for exactly this block."""
    forget_artifact_repos()
    try:
        yield copy_shared_run(run, dest)
    finally:
        forget_artifact_repos()


def copy_shared_run(run: SharedRun, dest: Path) -> SharedRun:
    """A private copy of ``run`` in the (empty or new) folder ``dest``, for a module that
    writes into the store: the sqlite file, artifacts and state are copied and the store's
    artifact locations point into the copy, so nothing written there reaches ``run``.
    Use it through ``private_copy`` (see ``forget_artifact_repos``)."""
    shutil.copytree(run.folder, dest, dirs_exist_ok=True)
    old, new = f"{run.folder}/", f"{dest}/"
    db = sqlite3.connect(dest / "mlflow.db")
    try:
        columns = {"experiments": "artifact_location", "runs": "artifact_uri", "logged_models": "artifact_location"}
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column in columns.items():
            if table in tables:
                db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new))
        db.commit()
        left = db.execute("SELECT count(*) FROM runs WHERE artifact_uri LIKE ?", (f"%{old}%",)).fetchone()[0]
    finally:
        db.close()
    assert left == 0, f"{left} runs of the copy still point into {run.folder}"
    moved = lambda path: dest / path.relative_to(run.folder)  # noqa: E731
    return replace(
        run, folder=dest, spec=moved(run.spec), uri=f"sqlite:///{dest}/mlflow.db", state_dir=moved(run.state_dir)
    )
