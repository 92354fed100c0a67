"""``orchestrate history``: every hypothesis run of a store, newest first, with its
verdict counts, and the ``refines:`` lineages. The real runs are checked in
test_compare (its slow test runs a refinement of the shared run)."""

from __future__ import annotations

import pytest

from helpers import new_mlflow_store
from orchestrator.compare.history import duration, history_rows, lineages
from orchestrator.compare.runs import HypothesisRun, hypothesis_runs
from orchestrator.tracking import LEVEL, Tracker
from test_compare import CLAIMS_A, CLAIMS_B, SAMPLES_A, SAMPLES_B, log_run
from test_report import orchestrate


def run(name: str, refines: str | None = None, start_ms: int = 0, end_ms: int | None = 1000) -> HypothesisRun:
    return HypothesisRun(
        f"{name}-{start_ms}".ljust(32, "0"),
        name,
        "default",
        "FINISHED",
        start_ms,
        end_ms,
        refines,
        {"SUPPORTED": 0, "REFUTED": 0, "INCONCLUSIVE": 0},
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """tiny-test twice, tiny-v2 refining it, and a run that failed before judging."""
    tracker = Tracker(new_mlflow_store(tmp_path_factory.mktemp("history")))
    first = log_run(tracker, "tiny-test", CLAIMS_A, SAMPLES_A)
    second = log_run(tracker, "tiny-test", CLAIMS_B, SAMPLES_B)
    refined = log_run(tracker, "tiny-v2", CLAIMS_A, SAMPLES_A, refines="tiny-test")
    experiment = tracker.experiment_id("broken")
    failed = tracker.start_run(
        experiment,
        "broken [smoke]",
        {LEVEL: "hypothesis", "orchestrate.hypothesis": "broken", "orchestrate.profile": "smoke"},
    )
    tracker.end_run(failed, "FAILED")
    return tracker, [failed, refined, second, first]


def test_every_hypothesis_run_is_listed_newest_first_with_its_verdict_counts(store):
    tracker, newest_first = store
    runs = hypothesis_runs(tracker)
    assert [r.run_id for r in runs] == newest_first  # arm and confirmation runs are not listed
    assert [r.verdict_counts for r in runs[1:]] == [
        {"SUPPORTED": 2, "REFUTED": 0, "INCONCLUSIVE": 0},
        {"SUPPORTED": 1, "REFUTED": 1, "INCONCLUSIVE": 1},
        {"SUPPORTED": 2, "REFUTED": 0, "INCONCLUSIVE": 0},
    ]
    assert (runs[0].hypothesis, runs[0].profile, runs[0].status, runs[0].judged) == (
        "broken",
        "smoke",
        "FAILED",
        False,
    )
    assert [r.refines for r in runs] == [None, "tiny-test", None, None]


def test_history_prints_a_row_per_run_and_the_lineage(store, capsys):
    tracker, newest_first = store
    assert orchestrate(["history", "--tracking-uri", tracker.uri]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if any(run_id[:8] in line for run_id in newest_first)]
    assert [next(r[:8] for r in newest_first if r[:8] in line) for line in lines] == [r[:8] for r in newest_first]
    assert "broken" in lines[0] and "smoke" in lines[0] and "FAILED" in lines[0] and " - " in lines[0]
    assert "1/1/1" in lines[2] and "2/0/0" in lines[3] and "tiny-test" in lines[1].split("tiny-v2")[1]
    assert "lineage: tiny-v2 -> tiny-test" in out


def test_an_empty_store_says_so(tmp_path, capsys):
    assert orchestrate(["history", "--tracking-uri", new_mlflow_store(tmp_path)]) == 0
    assert "no hypothesis run in sqlite:///" in capsys.readouterr().out


def test_rows_say_wall_time_and_running():
    rows = history_rows([run("a", start_ms=0, end_ms=185_000), run("b", start_ms=5, end_ms=None)])
    assert [(row.wall, row.verdicts, row.run_id) for row in rows] == [
        ("3m 05s", "-", "a-000000"),
        ("running", "-", "b-500000"),
    ]
    assert duration(59.6) == "1m 00s" and duration(3600) == "1h 00m"


def test_lineage_follows_refines_to_the_root_once_per_chain():
    runs = [run("c", "b", 3), run("b", "a", 2), run("a", None, 1), run("x", "gone", 0)]
    assert lineages(runs) == [["c", "b", "a"], ["x", "gone"]]


def test_the_newest_run_of_a_hypothesis_says_what_it_refines_and_a_cycle_ends():
    assert lineages([run("b", "a", 2), run("b", "z", 1)]) == [["b", "a"]]
    assert lineages([run("c", "a", 3), run("a", "b", 2), run("b", "a", 1)]) == [["c", "a", "b"]]
