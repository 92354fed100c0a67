"""Re-judging from MLflow alone: samples from confirmation runs, POST-HOC claims, --fail-on.

Fast tests use a hand-made MLflow tree (what ``orchestrate run`` logs, without Ray);
slow ones a private copy of the session's shared real run (conftest.py), since judging
post-hoc writes into the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import TINY_HYPOTHESIS, new_mlflow_store, private_copy
from methods import get_method
from orchestrator.cli import verdict_exit_code as exit_code
from orchestrator.judge import Verdict, judge_claims
from orchestrator.judge.rejudge import (
    POSTHOC_FILE,
    exact_metrics_from_summary,
    failures_from_summary,
    rejudge,
    samples_from_summary,
)
from orchestrator.tracking import ARM, LEVEL, Tracker
from test_report import orchestrate, synthetic_summary

REGISTERED = ["small.flops_ratio <= large.flops_ratio / 2", "small.test_accuracy >= large.test_accuracy - 0.5"]
POSTHOC_CLAIMS = [
    "small.flops_ratio <= large.flops_ratio / 2",  # SUPPORTED (exact)
    "small.flops_ratio >= large.flops_ratio",  # REFUTED (exact)
    "small.test_accuracy >= large.test_accuracy - 0.02",
]  # INCONCLUSIVE on SAMPLES below


def spec_with(folder: Path, claims: list[str], name: str = "posthoc.yaml") -> Path:
    head, _, _ = TINY_HYPOTHESIS.partition("expected:\n")
    path = folder / name
    path.write_text(head + "expected:\n" + "".join(f"  - {c}\n" for c in claims))
    return path


def test_exit_code_follows_fail_on():
    assert exit_code(None, ["REFUTED", "INCONCLUSIVE"]) == 0
    assert exit_code("refuted", ["SUPPORTED", "INCONCLUSIVE"]) == 0
    assert exit_code("refuted", ["SUPPORTED", "REFUTED"]) == 1
    assert exit_code("inconclusive", ["SUPPORTED", "SUPPORTED"]) == 0
    assert exit_code("inconclusive", ["SUPPORTED", "INCONCLUSIVE"]) == 1
    assert exit_code("inconclusive", ["REFUTED"]) == 1


def test_samples_leave_out_failed_confirmation_runs_and_failures_keep_their_error():
    summary = synthetic_summary()
    summary.arms[0].confirms[0].status = "FAILED"
    summary.arms[0].confirms[0].error = "RuntimeError: injected failure at step 0"
    samples = samples_from_summary(summary)
    assert sorted(samples["routed"]["test_accuracy"]) == [1001, 1002, 1003]
    assert samples["lora"]["flops_ratio"] == {1000: 1.0, 1001: 1.0, 1002: 1.0, 1003: 1.0}
    assert failures_from_summary(summary) == {"routed": {1000: "RuntimeError: injected failure at step 0"}}


def test_exact_metrics_come_from_each_arms_method_in_the_plan():
    summary = synthetic_summary()
    summary.plan["arms"][0]["method"] = "plateau_lora"  # the plan wins over the arm run's tag
    exact = exact_metrics_from_summary(summary)
    assert "flops_ratio" not in exact["routed"] and "flops_ratio" in exact["lora"]


# -- a hand-made tree: what the runner logs ---------------------------------------------------
SAMPLES = {
    "small": {
        "flops_ratio": {1000: 0.25, 1001: 0.25, 1002: 0.25},
        "test_accuracy": {1000: 0.81, 1001: 0.84, 1002: 0.80},
    },
    "large": {"flops_ratio": {1000: 1.0, 1001: 1.0, 1002: 1.0}, "test_accuracy": {1000: 0.83, 1001: 0.84, 1002: 0.82}},
}


FAILURE = "NonFiniteLossError: non-finite loss (nan) at step 3, epoch 0"


@pytest.fixture(scope="module")
def logged_tree(tmp_path_factory):
    """A hypothesis run, its arms small and large (LoRA) and their confirmation runs, a
    third arm 'flaky' whose seed 1003 FAILED, and the run-time verdicts, logged the way
    ``orchestrate run`` logs and judges them."""
    from mlflow.tracking import MlflowClient

    tmp_path = tmp_path_factory.mktemp("tree")
    uri = new_mlflow_store(tmp_path)
    MlflowClient(uri).create_experiment("tiny-test", artifact_location=(tmp_path / "artifacts").as_uri())
    tracker = Tracker(uri)
    experiment = tracker.experiment_id("tiny-test")
    parent = tracker.start_run(
        experiment,
        "tiny-test [default]",
        {
            LEVEL: "hypothesis",
            "orchestrate.hypothesis": "tiny-test",
            "orchestrate.profile": "default",
            "orchestrate.spec_file": "tiny.yaml",
            "mlflow.note.content": "s",
        },
    )
    plan = {
        "hypothesis": "tiny-test",
        "task": {"metric": "accuracy"},
        "judge": {"confidence": 0.95, "family_wise": None},
        "confirm": {"split": "test", "seeds": 3},
        "expected": REGISTERED,
        "arms": [
            {"arm": "small", "method": "lora"},
            {"arm": "large", "method": "lora"},
            {"arm": "flaky", "method": "lora"},
        ],
    }
    tracker.log_text(parent, json.dumps(plan), "plan.json")
    tracker.log_text(parent, "\n".join(REGISTERED), "expected.txt")
    for arm, metrics in {**SAMPLES, "flaky": SAMPLES["small"]}.items():
        arm_run = tracker.start_run(experiment, arm, {LEVEL: "arm", ARM: arm, "orchestrate.method": "lora"}, parent)
        for seed in metrics["flops_ratio"]:
            run = tracker.start_run(experiment, f"{arm} confirm seed={seed}", {LEVEL: "confirm", ARM: arm}, arm_run)
            tracker.log_params(run, {"seed": seed, "r": 2})
            tracker.log_metrics(run, {m: values[seed] for m, values in metrics.items()}, step=1)
            tracker.end_run(run)
        if arm == "flaky":
            failed = tracker.start_run(
                experiment,
                f"{arm} confirm seed=1003",
                {LEVEL: "confirm", ARM: arm, "orchestrate.status": "FAILED", "orchestrate.error": FAILURE},
                arm_run,
            )
            tracker.log_params(failed, {"seed": 1003})
            tracker.log_metrics(failed, {"test_accuracy": 0.0}, step=1)
            tracker.end_run(failed, "FAILED")
        tracker.end_run(arm_run)
    exact = {arm: get_method("lora").exact_metrics for arm in ("small", "large", "flaky")}
    samples = {**SAMPLES, "flaky": SAMPLES["small"]}
    verdicts = judge_claims(REGISTERED, samples, exact_metrics=exact, failed={"flaky": {1003: FAILURE}})
    tracker.log_text(
        parent,
        json.dumps({"samples": samples, "verdicts": [v.model_dump() for v in verdicts]}, default=str),
        "verdicts.json",
    )
    tracker.end_run(parent)
    return tracker, parent, verdicts


@pytest.fixture
def tree(logged_tree):
    """The hand-made tree, as registered (a previous test may have judged it post-hoc)."""
    tracker, parent, _ = logged_tree
    if "orchestrate.posthoc" in tracker.get_run(parent).data.tags:
        tracker.client.delete_tag(parent, "orchestrate.posthoc")
    return logged_tree


def test_rejudge_rebuilds_the_samples_and_reproduces_the_logged_verdicts(tree):
    tracker, parent, verdicts = tree
    judgement = rejudge(tracker, parent)
    assert (
        judgement.samples["flaky"]["test_accuracy"] == SAMPLES["small"]["test_accuracy"]
    )  # FAILED seed 1003 left out...
    assert judgement.failed == {"flaky": {1003: FAILURE}}  # ...and passed on
    assert judgement.verdicts == verdicts and judgement.reproduces_logged() and not judgement.posthoc


def test_a_failed_seed_of_a_claimed_arm_leaves_the_claim_inconclusive_from_mlflow_alone(tree):
    # Before, seed 1003 was dropped and flaky's three surviving seeds SUPPORTED the claim.
    from orchestrator.report.collect import collect_summary

    tracker, parent, _ = tree
    summary = collect_summary(tracker, parent, with_images=False)
    claims = ["flaky.test_accuracy >= large.test_accuracy - 0.5", "small.test_accuracy >= large.test_accuracy - 0.5"]
    flaky, small = judge_claims(
        claims,
        samples_from_summary(summary),
        exact_metrics=exact_metrics_from_summary(summary),
        failed=failures_from_summary(summary),
    )
    assert flaky.verdict == "INCONCLUSIVE" and small.verdict == "SUPPORTED"
    assert f"arm flaky, seed 1003: its run failed ({FAILURE})" in flaky.reason


def test_the_same_claims_spelled_differently_are_not_posthoc(tree, tmp_path):
    tracker, parent, verdicts = tree
    spec = spec_with(
        tmp_path, ["small.test_accuracy >= large.test_accuracy - 50%", "small.flops_ratio<=large.flops_ratio/2"]
    )
    judgement = rejudge(tracker, parent, spec)
    assert not judgement.posthoc and [v.verdict for v in judgement.verdicts] == [v.verdict for v in reversed(verdicts)]


def test_changed_claims_are_judged_posthoc_and_stored_apart(tree, tmp_path, capsys):
    tracker, parent, verdicts = tree
    spec = spec_with(tmp_path, POSTHOC_CLAIMS)
    assert orchestrate(["judge", parent, "--spec", str(spec), "--tracking-uri", tracker.uri]) == 0
    assert "POST-HOC" in capsys.readouterr().out
    run = tracker.get_run(parent)
    assert run.data.tags["orchestrate.posthoc"] == "true"
    assert run.data.tags["posthoc_verdict.1"] == "REFUTED: small.flops_ratio >= large.flops_ratio"
    stored = json.loads(Path(tracker.client.download_artifacts(parent, POSTHOC_FILE, str(tmp_path))).read_text())
    assert stored["claims"] == POSTHOC_CLAIMS and stored["registered_claims"] == REGISTERED
    assert [v["verdict"] for v in stored["verdicts"]] == ["SUPPORTED", "REFUTED", "INCONCLUSIVE"]
    logged = json.loads(
        Path(tracker.client.download_artifacts(parent, "verdicts.json", str(tmp_path / "v"))).read_text()
    )
    assert [Verdict.model_validate(v) for v in logged["verdicts"]] == verdicts  # the registered verdicts are untouched


@pytest.mark.parametrize(("fail_on", "code"), [("refuted", 1), ("inconclusive", 1)])  # None: 0, above
def test_fail_on_sets_the_exit_code(tree, tmp_path, fail_on, code):
    tracker, _, _ = tree
    argv = ["judge", "tiny-test", "--spec", str(spec_with(tmp_path, POSTHOC_CLAIMS)), "--tracking-uri", tracker.uri]
    assert orchestrate(argv + (["--fail-on", fail_on] if fail_on else [])) == code


def test_fail_on_inconclusive_passes_when_every_claim_is_supported(tree):
    tracker, parent, verdicts = tree
    assert {v.verdict for v in verdicts} == {"SUPPORTED"}
    assert orchestrate(["judge", "tiny-test", "--fail-on", "inconclusive", "--tracking-uri", tracker.uri]) == 0
    assert "orchestrate.posthoc" not in tracker.get_run(parent).data.tags


def test_judging_an_unknown_hypothesis_exits_2(tree, capsys):
    tracker, _, _ = tree
    assert orchestrate(["judge", "nope", "--tracking-uri", tracker.uri]) == 2
    assert "no hypothesis" in capsys.readouterr().err


# -- the real tiny run ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_run(shared_run, tmp_path_factory):
    """A private copy of the session's shared real run: the post-hoc test below writes tags
    and artifacts into the store, which the other modules read as the run logged it."""
    from mlflow.tracking import MlflowClient

    with private_copy(shared_run, tmp_path_factory.mktemp("rejudge-run")) as run:
        client = MlflowClient(run.uri)
        experiment = client.get_experiment_by_name("tiny-test")
        (parent,) = client.search_runs([experiment.experiment_id], "tags.`orchestrate.level` = 'hypothesis'")
        yield {
            "code": run.exit_code,
            "folder": run.folder,
            "spec": run.spec,
            "uri": run.uri,
            "client": client,
            "run_id": parent.info.run_id,
        }
    assert not list(shared_run.folder.rglob(POSTHOC_FILE)), "post-hoc judging wrote into the shared run"


def _logged_verdicts(run) -> list[Verdict]:
    tracker = Tracker(run["uri"])

    return [
        Verdict.model_validate(v) for v in json.loads(tracker.read_text(run["run_id"], "verdicts.json"))["verdicts"]
    ]


@pytest.mark.slow
def test_real_run_verdicts_are_reproduced_from_mlflow_alone(real_run, capsys):
    logged = _logged_verdicts(real_run)
    judgement = rejudge(Tracker(real_run["uri"]), real_run["run_id"])
    assert len(logged) == 2 and judgement.verdicts == logged
    assert orchestrate(["judge", "tiny-test", "--tracking-uri", real_run["uri"]]) == 0
    assert "reproduces the 2 verdicts logged at run time" in capsys.readouterr().out


@pytest.mark.slow
def test_real_run_fail_on_inconclusive_matches_the_logged_verdicts(real_run):
    expected = 0 if all(v.verdict == "SUPPORTED" for v in _logged_verdicts(real_run)) else 1
    assert (
        orchestrate(["judge", real_run["run_id"], "--fail-on", "inconclusive", "--tracking-uri", real_run["uri"]])
        == expected
    )


@pytest.mark.slow
def test_real_run_posthoc_claims_are_marked_in_mlflow_and_the_report(real_run, tmp_path):
    spec = spec_with(tmp_path, POSTHOC_CLAIMS[:2])  # the third depends on the seeds' noise
    assert (
        orchestrate(
            ["judge", "tiny-test", "--spec", str(spec), "--fail-on", "refuted", "--tracking-uri", real_run["uri"]]
        )
        == 1
    )
    client, run_id = real_run["client"], real_run["run_id"]
    tags = client.get_run(run_id).data.tags
    assert tags["orchestrate.posthoc"] == "true" and tags["verdict.0"].startswith("SUPPORTED")  # registered tags kept
    report = Path(client.download_artifacts(run_id, "report/report.md", str(tmp_path))).read_text()
    assert "> **POST-HOC:" in report and "## Post-hoc verdicts" in report
    assert "`small.flops_ratio >= large.flops_ratio` — REFUTED" in report
    assert (
        _logged_verdicts(real_run) == rejudge(Tracker(real_run["uri"]), run_id).verdicts
    )  # registered ones unchanged
