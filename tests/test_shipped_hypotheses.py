"""Every shipped hypothesis runs end to end with its smoke profile (tiny random models).

The session's local Ray (``shared_ray`` in conftest.py) serves all of them, so the cost
is the trials, not nine Ray start-ups.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import new_mlflow_store
from orchestrator.cli import main
from orchestrator.spec.loader import load_hypothesis

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SHIPPED = sorted((Path(__file__).resolve().parent.parent / "hypotheses").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_smoke_profile_runs_and_judges_every_claim(path, shared_ray, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = new_mlflow_store(tmp_path)
    assert main(["run", str(path), "--profile", "smoke", "--tracking-uri", uri, "--quiet"]) == 0
    spec = load_hypothesis(path, "smoke").hypothesis
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(spec.name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("orchestrate.level") == "hypothesis"]
    verdicts = [v for k, v in parent.data.tags.items() if k.startswith("verdict.")]
    assert len(verdicts) == len(spec.expected)
    assert all(v.split(":")[0] in ("SUPPORTED", "REFUTED", "INCONCLUSIVE") for v in verdicts)
    arms = {r.data.tags["orchestrate.arm"] for r in runs if r.data.tags.get("orchestrate.level") == "arm"}
    assert arms == set(spec.arms)
    confirms = [r for r in runs if r.data.tags.get("orchestrate.level") == "confirm" and r.info.status == "FINISHED"]
    assert len(confirms) == spec.confirm.seeds * len(spec.arms)
