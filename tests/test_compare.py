"""``orchestrate compare``: the spec diff, claims changed (post hoc) / added / removed,
verdicts that flipped, and each shared arm's numbers, between two hypothesis runs.

Fast tests use hand-made MLflow trees (what ``orchestrate run`` logs, without Ray) and
hand-built comparisons; the slow one runs a refined version of the session's shared real
run into a private copy of its store and compares the two."""

from __future__ import annotations

import doctest
import json
import re
from pathlib import Path

import pytest

from helpers import SHARED_HYPOTHESIS, TINY_HYPOTHESIS, new_mlflow_store, private_copy
from methods import get_method
from orchestrator.compare import claims as claims_module
from orchestrator.compare import compare_runs, resolve_target
from orchestrator.compare.blocks import comparison_blocks
from orchestrator.compare.claims import ClaimChangeKind, pair_claims
from orchestrator.judge import judge_claims
from orchestrator.report import ReportError
from orchestrator.report.render import to_html, to_markdown
from orchestrator.tracking import ARM, LEVEL, REFINES, Tracker
from test_report import orchestrate

CLAIMS_A = ["small.flops_ratio <= large.flops_ratio / 2", "small.test_accuracy >= large.test_accuracy - 0.5"]
CLAIMS_B = [
    "small.flops_ratio <= large.flops_ratio / 2",  # same: SUPPORTED in A, REFUTED in B (flops below)
    "small.test_accuracy >= large.test_accuracy - 0.02",  # changed: post hoc
    "small.trainable_params < large.trainable_params",  # added
]
SAMPLES_A = {
    "small": {
        "flops_ratio": {1000: 0.25, 1001: 0.25},
        "test_accuracy": {1000: 0.81, 1001: 0.84},
        "trainable_params": {1000: 100.0, 1001: 100.0},
    },
    "large": {
        "flops_ratio": {1000: 1.0, 1001: 1.0},
        "test_accuracy": {1000: 0.83, 1001: 0.84},
        "trainable_params": {1000: 400.0, 1001: 400.0},
    },
}
SAMPLES_B = {
    "small": {**SAMPLES_A["small"], "flops_ratio": {1000: 0.75, 1001: 0.75}},
    "large": SAMPLES_A["large"],
}


def spec_text(name: str, claims: list[str], refines: str | None = None) -> str:
    head, _, _ = TINY_HYPOTHESIS.partition("expected:\n")
    head = head.replace("name: tiny-test\n", f"name: {name}\n" + (f"refines: {refines}\n" if refines else ""))
    return head + "expected:\n" + "".join(f"  - {claim}\n" for claim in claims)


def log_run(tracker: Tracker, name: str, claims: list[str], samples: dict, refines: str | None = None) -> str:
    """A finished hypothesis run as ``orchestrate run`` logs it: spec, plan, claims, one
    confirmation run per arm and seed, and the verdicts (verdicts.json and verdict.N tags)."""
    experiment = tracker.experiment_id(name)
    tags = {
        LEVEL: "hypothesis",
        "orchestrate.hypothesis": name,
        "orchestrate.profile": "default",
        "orchestrate.spec_file": f"/specs/{name}.yaml",
        "mlflow.note.content": "s",
    }
    parent = tracker.start_run(experiment, f"{name} [default]", tags | ({REFINES: refines} if refines else {}))
    plan = {
        "hypothesis": name,
        "task": {"metric": "accuracy"},
        "judge": {"confidence": 0.95, "family_wise": None},
        "confirm": {"split": "test", "seeds": 2},
        "expected": claims,
        "arms": [{"arm": arm, "method": "lora"} for arm in samples],
    }
    tracker.log_text(parent, spec_text(name, claims, refines), f"spec/{name}.yaml")
    tracker.log_text(parent, json.dumps(plan), "plan.json")
    tracker.log_text(parent, "\n".join(claims), "expected.txt")
    for arm, metrics in samples.items():
        arm_run = tracker.start_run(experiment, arm, {LEVEL: "arm", ARM: arm, "orchestrate.method": "lora"}, parent)
        for seed in metrics["flops_ratio"]:
            run = tracker.start_run(experiment, f"{arm} confirm seed={seed}", {LEVEL: "confirm", ARM: arm}, arm_run)
            tracker.log_params(run, {"seed": seed})
            tracker.log_metrics(run, {m: values[seed] for m, values in metrics.items()}, step=1)
            tracker.end_run(run)
        tracker.end_run(arm_run)
    verdicts = judge_claims(claims, samples, exact_metrics={arm: get_method("lora").exact_metrics for arm in samples})
    tracker.set_tags(parent, {f"verdict.{i}": f"{v.verdict}: {v.claim}" for i, v in enumerate(verdicts)})
    tracker.log_text(
        parent, json.dumps({"verdicts": [v.model_dump() for v in verdicts]}, default=str), "verdicts.json"
    )
    tracker.end_run(parent)
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two runs of tiny-test (A, then B with one claim changed and one added), and a
    tiny-v2 that refines tiny-test."""
    tracker = Tracker(new_mlflow_store(tmp_path_factory.mktemp("compare")))
    run_a = log_run(tracker, "tiny-test", CLAIMS_A, SAMPLES_A)
    run_b = log_run(tracker, "tiny-test", CLAIMS_B, SAMPLES_B)
    run_v2 = log_run(tracker, "tiny-v2", CLAIMS_A, SAMPLES_A, refines="tiny-test")
    return tracker, run_a, run_b, run_v2


# -- claims -------------------------------------------------------------------------------------
def test_claims_that_mean_the_same_are_the_same_and_a_reworded_bound_is_changed():
    changes = pair_claims(["a.x >= b.x - 0.01", "a.y <= 1", "a.z <= 3"], ["a.x - b.x >= -1%", "a.y < 2", "b.w <= 1"])
    assert [(c.kind, c.before, c.after) for c in changes] == [
        (ClaimChangeKind.SAME, "a.x >= b.x - 0.01", "a.x - b.x >= -1%"),
        (ClaimChangeKind.CHANGED, "a.y <= 1", "a.y < 2"),
        (ClaimChangeKind.ADDED, None, "b.w <= 1"),
        (ClaimChangeKind.REMOVED, "a.z <= 3", None),
    ]
    assert [c.posthoc for c in changes] == [False, True, False, False]


def test_a_claim_meaning_the_same_is_never_taken_for_a_changed_one():
    # B's second claim is A's first, reworded; B's first bounds the same metrics: only it changed
    changes = pair_claims(["a.x >= 0.5"], ["a.x >= 0.6", "a.x >= 50%"])
    assert [c.kind for c in changes] == [ClaimChangeKind.ADDED, ClaimChangeKind.SAME]


def test_the_docstring_examples_run():
    from orchestrator.compare import history

    for module in (claims_module, history):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0


# -- naming the runs ----------------------------------------------------------------------------
def test_a_name_is_its_newest_finished_run_and_name_at_n_the_nth_newest(store):
    tracker, run_a, run_b, _ = store
    assert resolve_target(tracker, "tiny-test") == run_b
    assert resolve_target(tracker, "tiny-test@1") == run_b
    assert resolve_target(tracker, "tiny-test@2") == run_a
    assert resolve_target(tracker, run_a[:8]) == run_a  # as history shows it
    assert resolve_target(tracker, run_a) == run_a
    with pytest.raises(ReportError, match="has 2 FINISHED runs"):
        resolve_target(tracker, "tiny-test@3")
    with pytest.raises(ReportError, match="counts from 1"):
        resolve_target(tracker, "tiny-test@0")


@pytest.mark.parametrize("target", ["nope", "nope@2", "abcdef12"])
def test_an_unknown_name_or_run_exits_2_saying_so(store, capsys, target):
    tracker, _, _, _ = store
    assert orchestrate(["compare", "tiny-test", target, "--tracking-uri", tracker.uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith("orchestrate: no hypothesis") and repr(target.partition("@")[0]) in err


# -- the comparison -----------------------------------------------------------------------------
def test_changed_added_and_flipped_are_found_against_each_runs_logged_verdicts(store):
    tracker, run_a, run_b, _ = store
    comparison = compare_runs(tracker, run_a, run_b)
    assert [(c.kind, c.after) for c in comparison.claims] == [
        (ClaimChangeKind.SAME, CLAIMS_B[0]),
        (ClaimChangeKind.CHANGED, CLAIMS_B[1]),
        (ClaimChangeKind.ADDED, CLAIMS_B[2]),
    ]
    verdicts = {
        pair.claim: (pair.verdict_a and pair.verdict_a.verdict, pair.verdict_b and pair.verdict_b.verdict)
        for pair in comparison.verdicts
    }
    assert verdicts == {
        CLAIMS_B[0]: ("SUPPORTED", "REFUTED"),
        CLAIMS_B[1]: ("SUPPORTED", "INCONCLUSIVE"),
        CLAIMS_B[2]: (None, "SUPPORTED"),
    }
    assert [pair.claim for pair in comparison.flipped] == CLAIMS_B[:2]
    assert comparison.lineage == "two runs of tiny-test"


def test_each_shared_arm_has_its_metrics_side_by_side_with_the_difference(store):
    tracker, run_a, run_b, _ = store
    comparison = compare_runs(tracker, run_a, run_b)
    small = next(arm for arm in comparison.arms if arm.arm == "small")
    by_metric = {m.metric: m for m in small.metrics}
    assert list(by_metric) == ["test_accuracy", "flops_ratio", "trainable_params"]
    assert by_metric["flops_ratio"].a.mean == 0.25 and by_metric["flops_ratio"].b.mean == 0.75
    assert by_metric["flops_ratio"].difference == pytest.approx(0.5)
    accuracy = by_metric["test_accuracy"]
    assert accuracy.a.mean == pytest.approx(0.825) and accuracy.a.n == 2 and accuracy.a.half_width > 0
    assert accuracy.difference == 0


def test_the_spec_diff_shows_the_changed_and_added_claim_lines(store):
    tracker, run_a, run_b, _ = store
    diff = compare_runs(tracker, run_a, run_b).spec_diff
    assert f"-  - {CLAIMS_A[1]}" in diff
    assert f"+  - {CLAIMS_B[1]}" in diff and f"+  - {CLAIMS_B[2]}" in diff
    assert f"   - {CLAIMS_A[0]}" in diff  # context
    assert diff[0].startswith(f"--- A {run_a[:8]} tiny-test.yaml")


def test_compare_prints_markdown_with_the_post_hoc_claim_the_flips_and_the_arms(store, capsys, tmp_path):
    tracker, run_a, _, _ = store
    page = tmp_path / "out" / "compare.html"
    assert (
        orchestrate(["compare", "tiny-test@2", "tiny-test", "--tracking-uri", tracker.uri, "--html", str(page)]) == 0
    )
    out = capsys.readouterr().out
    assert f"| changed: **post hoc** | `{CLAIMS_A[1]}` | `{CLAIMS_B[1]}` |" in out
    assert f"| added in B | - | `{CLAIMS_B[2]}` |" in out
    assert "POST HOC: 1 of B's claims" in out
    assert f"```diff\n--- A {run_a[:8]}" in out and f"+  - {CLAIMS_B[2]}" in out
    assert f"- `{CLAIMS_B[0]}`: SUPPORTED -> REFUTED (estimate " in out
    assert "2 of the 2 claims judged in both runs flipped." in out
    assert "| small | flops_ratio | 0.25 | 0.75 | +0.5 |" in out
    assert "| large | flops_ratio | 1 | 1 | 0 |" in out
    html = page.read_text()
    assert '<pre class="diff">' in html and '<span class="add">+  - small.trainable_params' in html
    assert "<strong>post hoc</strong>" in html and not re.search(r"diff-[0-9a-f]{16}-\d", html)  # markers swapped


def test_compare_says_when_b_refines_a(store, capsys):
    tracker, run_a, _, _ = store
    assert orchestrate(["compare", run_a, "tiny-v2", "--tracking-uri", tracker.uri]) == 0
    out = capsys.readouterr().out
    assert "Lineage: tiny-v2 refines tiny-test." in out
    assert "0 of the 2 claims judged in both runs flipped." in out


# -- rendering, on hand-built inputs --------------------------------------------------------------
def test_a_diff_is_a_fenced_block_that_a_fence_in_the_spec_does_not_end_and_a_pre_in_html():
    from orchestrator.report.render import Diff, Para

    assert to_markdown([Diff(["+```", "-x"])]) == "```diff\n+```\n-x\n```\n"
    assert to_markdown([Diff([" ```", "-x"])]) == "~~~~diff\n ```\n-x\n~~~~\n"
    html = to_html([Para("before"), Diff(["@@ -1 +1 @@", "-a < b", "+c"]), Para("after")], "t", Path("."))
    assert '<pre class="diff"><span class="hunk">@@ -1 +1 @@</span>\n<span class="del">-a &lt; b</span>' in html
    assert html.index("before") < html.index("<pre") < html.index("after")


def test_blocks_of_identical_runs_say_nothing_changed(store):
    tracker, run_a, _, _ = store
    text = to_markdown(comparison_blocks(compare_runs(tracker, run_a, run_a)))
    assert "The two runs ran the same spec text." in text
    assert "2 claims the same in both." in text and "0 of the 2 claims judged in both runs flipped." in text
    assert "POST HOC" not in text


# -- refines: in the spec and the plan ------------------------------------------------------------
def test_refines_names_a_hypothesis_or_a_file_whose_name_it_takes(tmp_path):
    from orchestrator.errors import InputError
    from orchestrator.plan import make_plan
    from orchestrator.spec.loader import load_hypothesis

    (tmp_path / "first.yaml").write_text(TINY_HYPOTHESIS)
    (tmp_path / "by-name.yaml").write_text(spec_text("v2", CLAIMS_A, refines="tiny-test"))
    (tmp_path / "by-file.yaml").write_text(spec_text("v2", CLAIMS_A, refines="first.yaml"))
    (tmp_path / "missing.yaml").write_text(spec_text("v2", CLAIMS_A, refines="nowhere.yaml"))
    assert make_plan(load_hypothesis(str(tmp_path / "by-name.yaml"), None)).refines == "tiny-test"
    plan = make_plan(load_hypothesis(str(tmp_path / "by-file.yaml"), None))
    assert plan.refines == "tiny-test" and plan.to_dict()["refines"] == "tiny-test"
    assert make_plan(load_hypothesis(str(tmp_path / "first.yaml"), None)).refines is None
    with pytest.raises(InputError, match=r"refines: cannot read the refined hypothesis .*nowhere\.yaml"):
        make_plan(load_hypothesis(str(tmp_path / "missing.yaml"), None))


# -- the real thing -------------------------------------------------------------------------------
REFINED_CLAIMS = [
    "small.flops_ratio <= large.flops_ratio / 2",
    "small.test_accuracy >= large.test_accuracy + 0.5",  # changed (was - 0.5): post hoc
    "small.trainable_params < large.trainable_params",  # added
]


def refined_hypothesis() -> str:
    """The shared run's hypothesis as tiny-v2, refining it (by file), one claim changed and
    one added; its searches have the shared run's identity, so their trials are reused."""
    head, _, _ = SHARED_HYPOTHESIS.partition("expected:\n")
    head = head.replace("name: tiny-test\n", "name: tiny-v2\nrefines: tiny.yaml\n")
    return head + "expected:\n" + "".join(f"  - {claim}\n" for claim in REFINED_CLAIMS)


@pytest.fixture(scope="module")
def refined_run(shared_run, tmp_path_factory):
    """A private copy of the shared run's store with tiny-v2 run into it after tiny-test."""
    from orchestrator.cli import main

    with private_copy(shared_run, tmp_path_factory.mktemp("compare-run")) as run:
        spec = run.folder / "tiny-v2.yaml"
        spec.write_text(refined_hypothesis())
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(run.folder)
            code = main(["run", str(spec), "--tracking-uri", run.uri, "--state-dir", str(run.state_dir), "--quiet"])
        assert code == 0
        yield run


@pytest.mark.slow
def test_compare_and_history_of_a_real_run_and_its_refinement(refined_run, capsys):
    from orchestrator.compare.runs import hypothesis_runs

    tracker = Tracker(refined_run.uri)
    newest, first = hypothesis_runs(tracker)
    assert (newest.hypothesis, newest.refines, first.hypothesis) == ("tiny-v2", "tiny-test", "tiny-test")
    comparison = compare_runs(tracker, first.run_id, newest.run_id)
    assert [c.kind for c in comparison.claims] == [
        ClaimChangeKind.SAME,
        ClaimChangeKind.CHANGED,
        ClaimChangeKind.ADDED,
    ]
    for pair in comparison.verdicts:  # against each run's own verdicts.json
        logged_a = {v.claim: v.verdict for v in comparison.a.summary.verdicts}
        logged_b = {v.claim: v.verdict for v in comparison.b.summary.verdicts}
        assert pair.flipped == (
            pair.change.before in logged_a
            and pair.change.after in logged_b
            and logged_a[pair.change.before] != logged_b[pair.change.after]
        )
    assert comparison.verdicts[0].verdict_a.verdict == comparison.verdicts[0].verdict_b.verdict == "SUPPORTED"
    assert comparison.verdicts[2].verdict_b.verdict == "SUPPORTED"  # r=2 trains fewer parameters than r=8
    assert {arm.arm for arm in comparison.arms} == {"small", "large", "flaky"}

    assert orchestrate(["compare", "tiny-test", "tiny-v2", "--tracking-uri", refined_run.uri]) == 0
    out = capsys.readouterr().out
    assert "Lineage: tiny-v2 refines tiny-test." in out
    assert f"| changed: **post hoc** | `{CLAIMS_A[1]}` | `{REFINED_CLAIMS[1]}` |" in out
    assert f"| added in B | - | `{REFINED_CLAIMS[2]}` |" in out
    assert "-name: tiny-test\n+name: tiny-v2\n+refines: tiny.yaml" in out
    assert "| small | test_accuracy |" in out and "| small | trainable_params |" in out

    assert orchestrate(["history", "--tracking-uri", refined_run.uri]) == 0
    out = capsys.readouterr().out
    assert out.index(newest.run_id[:8]) < out.index(first.run_id[:8])
    assert "lineage: tiny-v2 -> tiny-test" in out
    counts = "/".join(str(n) for n in newest.verdict_counts.values())
    assert sum(newest.verdict_counts.values()) == 3 and counts in out
