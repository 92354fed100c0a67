"""Sequential confirmation: rounds of seeds, a look of the judge after each, only the arms
of open claims going on, and a kill between or during rounds losing or repeating no seed.

The real runs use two claims whose course does not depend on the seeds' noise:
``small.trainable_params <= 1e9`` is fixed by LoRA's configuration (the same on every
seed, compared exactly), so it is SUPPORTED at look 1 and ``small`` stops after round 1;
``large.epoch >= 0.5`` names a metric every seed reports as 1 that LoRA does not fix, so
its spread stays unknown and it stays open to the cap: ``large`` runs round 2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from helpers import TINY_HYPOTHESIS, new_mlflow_store
from orchestrator.cli import main
from orchestrator.execute.looks import JudgeSettings, Look, replay_looks, runs_through
from orchestrator.execute.state import RunState
from orchestrator.judge import judge_claims
from orchestrator.judge.rejudge import rejudge
from orchestrator.judge.sequential import look_alpha
from orchestrator.plan import confirm_rounds
from orchestrator.spec.errors import SpecError
from orchestrator.spec.loader import load_hypothesis
from orchestrator.spec.models import ConfirmSpec
from orchestrator.tracking import Tracker

CLAIMS = ["small.trainable_params <= 1e9", "large.epoch >= 0.5"]
SPEC = (
    TINY_HYPOTHESIS.replace("trials_per_arm: 2", "trials_per_arm: 1")
    .replace("confirm: {seeds: 2, split: test}", "confirm: {seeds: 2, max_seeds: 4, split: test}")
    .partition("expected:\n")[0]
    + "expected:\n"
    + "".join(f"  - {claim}\n" for claim in CLAIMS)
)
SIZES = [2, 4]


def real_run(test):
    """A test on a real run (Ray, MLflow, training): slow and end to end."""
    return pytest.mark.slow(pytest.mark.e2e(test))


# -- the plan and the spec ----------------------------------------------------------------------
def test_max_seeds_below_seeds_is_refused_at_its_line_with_exit_2(tmp_path, capsys):
    text = SPEC.replace("max_seeds: 4", "max_seeds: 1")
    path = tmp_path / "h.yaml"
    path.write_text(text)
    line = 1 + text.splitlines().index(next(row for row in text.splitlines() if row.startswith("confirm:")))
    with pytest.raises(SpecError) as info:
        load_hypothesis(path)
    (issue,) = [str(i) for i in info.value.issues]
    assert issue.startswith(f"{path}:{line}: confirm.max_seeds: max_seeds (1) is below seeds (2)")
    assert main(["validate", str(path)]) == 2
    assert f"{path}:{line}: confirm.max_seeds" in capsys.readouterr().err


def test_the_seeds_of_a_round_are_fixed_by_the_round_and_the_last_is_cut_at_max_seeds():
    assert confirm_rounds(ConfirmSpec(seeds=3, max_seeds=8)) == [[1000, 1001, 1002], [1003, 1004, 1005], [1006, 1007]]
    assert confirm_rounds(ConfirmSpec(seeds=3)) == [[1000, 1001, 1002]]  # no max_seeds: one look, as before rounds


# -- looks on hand-made runs -----------------------------------------------------------------------
def confirm_run(seed: int, **metrics: float) -> SimpleNamespace:
    """What a look reads of a confirmation run (no MLflow run id: no per-example record)."""
    return SimpleNamespace(seed=seed, status="COMPLETED", error=None, metrics=metrics)


def settings(rounds: list[list[int]], claims: list[str] = CLAIMS) -> JudgeSettings:
    return JudgeSettings(claims, rounds, 0.95, None, {"small": frozenset({"trainable_params"}), "large": frozenset()})


ROUNDS = [[1000, 1001], [1002, 1003]]
RUNS = {
    "small": [confirm_run(s, trainable_params=4096.0) for s in (1000, 1001)],
    "large": [confirm_run(s, epoch=1.0) for s in (1000, 1001, 1002, 1003)],
}


def test_look_k_sees_each_arm_s_runs_of_rounds_one_to_k_only():
    assert {arm: [r.seed for r in runs] for arm, runs in runs_through(RUNS, ROUNDS, 1).items()} == {
        "small": [1000, 1001],
        "large": [1000, 1001],
    }
    first, second = replay_looks(settings(ROUNDS), RUNS, tracker=None)
    assert first.seeds == {"small": [1000, 1001], "large": [1000, 1001]}
    assert second.seeds == {"small": [1000, 1001], "large": [1000, 1001, 1002, 1003]}
    assert [v.n for v in second.verdicts] == [{"small": 2}, {"large": 4}]


def test_a_settled_claim_keeps_its_look_and_only_the_open_claims_arms_go_on():
    first, second = replay_looks(settings(ROUNDS), RUNS, tracker=None)
    assert [(v.verdict, v.look) for v in first.verdicts] == [("SUPPORTED", 1), ("INCONCLUSIVE", 1)]
    assert first.continuing == ["large"] and first.settled_here()[0][0] == 1
    assert second.verdicts[0] == first.verdicts[0]
    assert (second.verdicts[1].verdict, second.verdicts[1].look) == ("INCONCLUSIVE", 2)
    assert second.continuing == []  # the cap: no round after the last planned look
    assert [first.alpha, second.alpha] == [look_alpha(1 - 0.95, 1, SIZES), look_alpha(1 - 0.95, 2, SIZES)]


def test_with_one_round_the_one_look_is_judge_claims():
    (look,) = replay_looks(settings([[1000, 1001, 1002, 1003]]), RUNS, tracker=None)
    samples = {
        "small": {"trainable_params": {1000: 4096.0, 1001: 4096.0}},
        "large": {"epoch": {s: 1.0 for s in range(1000, 1004)}},
    }
    assert look.verdicts == judge_claims(CLAIMS, samples, exact_metrics=settings([]).exact_metrics)
    assert look.continuing == [] and look.alpha == pytest.approx(0.05)


def test_a_look_survives_its_json():
    first, _ = replay_looks(settings(ROUNDS), RUNS, tracker=None)
    assert Look.from_dict(json.loads(json.dumps(first.to_dict()))) == first


# -- a real run, stopped between its rounds and resumed -------------------------------------------
def confirm_runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny-test")
    return [
        r
        for r in client.search_runs([experiment.experiment_id], max_results=1000)
        if r.data.tags.get("orchestrate.level") == "confirm"
    ]


def finished_seeds(uri: str) -> dict[str, list[int]]:
    """arm -> the seed of each FINISHED confirmation run (a seed twice: run twice)."""
    seeds: dict[str, list[int]] = {}
    for run in confirm_runs(uri):
        if run.info.status == "FINISHED":
            seeds.setdefault(run.data.tags["orchestrate.arm"], []).append(int(run.data.params["seed"]))
    return {arm: sorted(s) for arm, s in seeds.items()}


@pytest.fixture(scope="module")
def stopped_and_resumed(tmp_path_factory, shared_ray):
    """The run stopped (KeyboardInterrupt, as Ctrl-C) right after look 1 was saved, i.e.
    after round 1's records; then the same command again."""
    folder = tmp_path_factory.mktemp("sequential")
    spec = folder / "tiny.yaml"
    spec.write_text(SPEC)
    uri = new_mlflow_store(folder)
    argv = ["run", str(spec), "--tracking-uri", uri, "--state-dir", str(folder / "state"), "--quiet"]
    add_look = RunState.add_look

    def stop_after_look_one(state: RunState, look: dict) -> None:
        add_look(state, look)
        if look["index"] == 1:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setattr(RunState, "add_look", stop_after_look_one)
        stopped = main(argv)
        at_stop = {r.info.run_id: r.info.status for r in confirm_runs(uri)}
        mp.setattr(RunState, "add_look", add_look)
        resumed = main(argv)
    client = MlflowClient(uri)
    (parent,) = [
        r
        for r in client.search_runs([client.get_experiment_by_name("tiny-test").experiment_id])
        if r.data.tags.get("orchestrate.level") == "hypothesis"
    ]

    def read(name: str):
        return json.loads(Path(client.download_artifacts(parent.info.run_id, name, str(folder / "dl"))).read_text())

    return SimpleNamespace(
        folder=folder,
        uri=uri,
        codes=(stopped, resumed),
        at_stop=at_stop,
        parent=parent,
        looks=read("looks.json"),
        verdicts=read("verdicts.json"),
    )


@real_run
def test_the_stopped_run_exits_130_and_the_resumed_one_0(stopped_and_resumed):
    assert stopped_and_resumed.codes == (130, 0)
    assert stopped_and_resumed.parent.info.status == "FINISHED"


@real_run
def test_round_one_ran_once_and_round_two_only_for_the_arm_of_the_open_claim(stopped_and_resumed):
    run = stopped_and_resumed
    assert sorted(run.at_stop.values()) == ["FINISHED"] * 4  # round 1 was complete at the stop...
    assert finished_seeds(run.uri) == {"small": [1000, 1001], "large": [1000, 1001, 1002, 1003]}  # ...each seed once
    assert {r.info.run_id for r in confirm_runs(run.uri)} - set(
        run.at_stop
    ) == {  # the resume added round 2's runs only
        r.info.run_id for r in confirm_runs(run.uri) if r.data.params["seed"] in ("1002", "1003")
    }


@real_run
def test_looks_json_records_each_look(stopped_and_resumed):
    first, second = stopped_and_resumed.looks
    assert first["seeds"] == {"small": [1000, 1001], "large": [1000, 1001]}
    assert first["seeds_per_arm"] == {"small": 2, "large": 2} and first["continuing"] == ["large"]
    assert [(v["verdict"], v["look"]) for v in first["verdicts"]] == [("SUPPORTED", 1), ("INCONCLUSIVE", 1)]
    assert second["seeds"] == {"small": [1000, 1001], "large": [1000, 1001, 1002, 1003]} and second["continuing"] == []
    assert [(v["verdict"], v["look"]) for v in second["verdicts"]] == [("SUPPORTED", 1), ("INCONCLUSIVE", 2)]
    assert [first["alpha"], second["alpha"]] == [look_alpha(1 - 0.95, 1, SIZES), look_alpha(1 - 0.95, 2, SIZES)]


@real_run
def test_the_final_verdicts_are_the_last_look_s(stopped_and_resumed):
    run = stopped_and_resumed
    assert run.verdicts["verdicts"] == run.looks[-1]["verdicts"] and run.verdicts["looks"] == run.looks
    tags, metrics = run.parent.data.tags, run.parent.data.metrics
    assert tags["verdict.0"] == f"SUPPORTED: {CLAIMS[0]}" and tags["verdict.1"] == f"INCONCLUSIVE: {CLAIMS[1]}"
    assert tags["look.1"].startswith("look 1 (small=2, large=2 seeds; alpha 0.031): #1 SUPPORTED; go on: large")
    assert metrics["confirm_looks"] == 2


@real_run
def test_the_report_shows_the_looks(stopped_and_resumed):
    (report,) = stopped_and_resumed.folder.glob("reports/*/report.md")
    text = report.read_text()
    assert "## Looks" in text
    assert f"| 1 | small=2, large=2 | 0.031 | #1 `{CLAIMS[0]}`: SUPPORTED | large |" in text
    assert "| 2 | small=2, large=4 | 0.019 | none | none (max_seeds reached) |" in text


@real_run
def test_orchestrate_judge_replays_the_looks_from_mlflow_alone(stopped_and_resumed):
    run = stopped_and_resumed
    judgement = rejudge(Tracker(run.uri), run.parent.info.run_id)
    assert json.loads(json.dumps([look.to_dict() for look in judgement.looks])) == run.looks
    assert judgement.reproduces_logged() and not [n for n in judgement.notes if n.startswith("look ")]


# -- a real run killed during round 2 ---------------------------------------------------------------
def run_state(folder: Path) -> dict:
    try:
        return json.loads((folder / "state" / "state" / "tiny-test--default.json").read_text())
    except (OSError, json.JSONDecodeError):  # not written yet
        return {}


def round_two_records(state: dict) -> int:
    return sum(
        1
        for arm in state.get("arms", {}).values()
        for record in arm.get("records", {}).get("confirm", {}).values()
        if record["seed"] >= 1002
    )


@real_run
def test_a_run_killed_during_round_two_resumes_it_with_one_run_per_seed(tmp_path):
    (tmp_path / "tiny.yaml").write_text(SPEC)
    uri = new_mlflow_store(tmp_path)
    command = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "run",
        str(tmp_path / "tiny.yaml"),
        "--quiet",
        "--state-dir",
        str(tmp_path / "state"),
        "--tracking-uri",
        uri,
    ]
    proc = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 600
    while round_two_records(state := run_state(tmp_path)) < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "round 2 never started in 10 minutes"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait(timeout=60)
    large = state["arms"]["large"]
    assert sorted(large["confirm_rounds"]) == ["1"] and large["confirm_callback_keys"]["2"]  # killed during round 2
    assert len(state["looks"]) == 1

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert finished_seeds(uri) == {"small": [1000, 1001], "large": [1000, 1001, 1002, 1003]}
    assert not [r for r in confirm_runs(uri) if r.info.status == "RUNNING"]
    client = MlflowClient(uri)
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("tiny-test").experiment_id], "tags.`orchestrate.level` = 'hypothesis'"
    )
    looks = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "looks.json", str(tmp_path / "dl"))).read_text()
    )
    assert [(look["seeds"], [v["verdict"] for v in look["verdicts"]], look["continuing"]) for look in looks] == [
        ({"small": [1000, 1001], "large": [1000, 1001]}, ["SUPPORTED", "INCONCLUSIVE"], ["large"]),
        ({"small": [1000, 1001], "large": [1000, 1001, 1002, 1003]}, ["SUPPORTED", "INCONCLUSIVE"], []),
    ]
