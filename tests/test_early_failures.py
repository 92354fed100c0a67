"""A run that fails before its search starts leaves nothing open in MLflow.

The data are read and tokenised before the hypothesis's MLflow run is created
(``execute.runner.run_plan``), so a dataset or model that cannot load ends the command
(exit 1) with no run at all: nothing RUNNING for a rerun to continue. A failure after
the run exists closes it FAILED with the reason (``tests/test_faults.py`` checks that
on a real search whose every trial fails).
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from helpers import TINY_HYPOTHESIS, new_mlflow_store
from orchestrator.cli import main


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("dataset", "no-such-owner/no-such-dataset", "offline, use embedded:rotten-tomatoes"),
        ("model", "no-such-owner/no-such-model", "no-such-owner/no-such-model"),
    ],
)
def test_data_or_model_that_cannot_load_starts_no_mlflow_run(field, value, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    default = {"dataset": "synthetic:polarity", "model": "random:bert-tiny"}[field]
    spec = tmp_path / "unloadable.yaml"
    spec.write_text(TINY_HYPOTHESIS.replace(f"{field}: {default}", f"{field}: {value}"))
    uri = new_mlflow_store(tmp_path)
    code = main(["run", str(spec), "--tracking-uri", uri, "--state-dir", str(tmp_path / "state"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # before it, at most MLflow's notes on creating the store
    assert last.startswith("orchestrate: ") and message in last, err
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny-test")
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []
