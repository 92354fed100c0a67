"""Each arm's winner after its search (``orchestrator.execute.winners``).

The winner is what gets confirmed on fresh seeds and judged, so the rules are the
contract: the best finished feasible trial by the first objective and its mode; a failed
trial never wins, an infeasible one only when no feasible trial exists (said in the
reason), ties go to the earlier trial; with several objectives the arm's Pareto front is
logged as well. Trials are built as ``TrialRecord``s directly; no Ray, no MLflow (a
recording stand-in takes the tracker's place).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from orchestrator.execute.winners import AllTrialsFailedError, log_pareto_front, pick_winner, select_best
from orchestrator.plan import make_plan
from orchestrator.results import COMPLETED, FAILED, INFEASIBLE, STOPPED, TrialRecord
from orchestrator.spec.loader import load_hypothesis

HYPOTHESIS = """\
name: winners-test
statement: one arm, to pick its winner
task: {{model: random:bert-tiny, dataset: synthetic:polarity, max_length: 32}}
arms:
  arm: {{method: lora, fixed: {{r: 2}}}}
search:
  sampler: tpe
  objectives: {objectives}
  trials_per_arm: 4
  constraints: ['all: flops_ratio <= 0.5']
"""


@pytest.fixture
def arm_plan(tmp_path: Path):
    """The one arm's plan of HYPOTHESIS with the given objectives (``{metric: mode}``)."""

    def plan(objectives: dict[str, str]):
        path = tmp_path / "winners.yaml"
        path.write_text(HYPOTHESIS.format(objectives=json.dumps(objectives)))
        (arm,) = make_plan(load_hypothesis(path)).arms
        return arm

    return plan


def trial(n: int, status: str = COMPLETED, error: str | None = None, **metrics: float) -> TrialRecord:
    return TrialRecord(
        trial_id=f"t{n}",
        arm="arm",
        kind="trial",
        params={"lr": n / 1000},
        status=status,
        metrics=metrics,
        error=error,
        mlflow_run_id=f"run{n}",
        feasible=status != INFEASIBLE,
    )


def test_the_best_finished_trial_by_the_primary_objective_wins(arm_plan):
    trials = [trial(0, val_accuracy=0.7), trial(1, val_accuracy=0.9), trial(2, val_accuracy=0.8)]
    best, reason = select_best(trials, arm_plan({"val_accuracy": "max"}))
    assert best.trial_id == "t1"
    assert reason == "best val_accuracy (max) among finished feasible trials"


def test_mode_min_picks_the_smallest(arm_plan):
    trials = [trial(0, val_loss=0.7), trial(1, val_loss=0.3), trial(2, val_loss=0.5)]
    best, _ = select_best(trials, arm_plan({"val_loss": "min"}))
    assert best.trial_id == "t1"


def test_only_the_first_objective_decides_the_winner(arm_plan):
    trials = [trial(0, val_accuracy=0.9, flops_ratio=0.4), trial(1, val_accuracy=0.8, flops_ratio=0.1)]
    best, _ = select_best(trials, arm_plan({"val_accuracy": "max", "flops_ratio": "min"}))
    assert best.trial_id == "t0"


def test_a_failed_trial_never_wins_even_with_a_better_metric(arm_plan):
    trials = [trial(0, status=FAILED, error="boom", val_accuracy=0.99), trial(1, val_accuracy=0.6)]
    best, _ = select_best(trials, arm_plan({"val_accuracy": "max"}))
    assert best.trial_id == "t1"


def test_a_feasible_trial_beats_a_better_infeasible_one(arm_plan):
    trials = [trial(0, INFEASIBLE, val_accuracy=0.95, flops_ratio=0.9), trial(1, val_accuracy=0.6, flops_ratio=0.3)]
    best, _ = select_best(trials, arm_plan({"val_accuracy": "max"}))
    assert best.trial_id == "t1"


def test_without_a_feasible_trial_the_best_infeasible_one_wins_and_the_reason_says_so(arm_plan):
    trials = [trial(0, INFEASIBLE, val_accuracy=0.7), trial(1, INFEASIBLE, val_accuracy=0.8), trial(2, FAILED, "x")]
    best, reason = select_best(trials, arm_plan({"val_accuracy": "max"}))
    assert best.trial_id == "t1"
    assert reason.startswith("NO feasible trial") and "flops_ratio <= 0.5" in reason


def test_early_stopped_trials_win_only_when_none_finished(arm_plan):
    plan = arm_plan({"val_accuracy": "max"})
    stopped = trial(0, status=STOPPED, val_accuracy=0.9)
    assert select_best([stopped, trial(1, val_accuracy=0.5)], plan)[0].trial_id == "t1"
    best, reason = select_best([stopped, trial(2, status=FAILED, error="x")], plan)
    assert best is stopped and reason.startswith("no trial finished all epochs")


def test_a_tie_goes_to_the_earlier_trial(arm_plan):
    trials = [trial(0, val_accuracy=0.5), trial(1, val_accuracy=0.8), trial(2, val_accuracy=0.8)]
    assert select_best(trials, arm_plan({"val_accuracy": "max"}))[0].trial_id == "t1"
    assert select_best(list(reversed(trials)), arm_plan({"val_accuracy": "max"}))[0].trial_id == "t2"


@pytest.mark.parametrize("mode", ["max", "min"])
def test_a_nan_metric_never_wins(mode, arm_plan):
    trials = [trial(0, val_accuracy=math.nan), trial(1, val_accuracy=0.6), trial(2, val_accuracy=0.4)]
    best, _ = select_best(trials, arm_plan({"val_accuracy": mode}))
    assert best.trial_id == ("t1" if mode == "max" else "t2")


def test_a_trial_without_the_metric_is_not_a_candidate(arm_plan):
    trials = [trial(0, val_loss=0.1), trial(1, val_accuracy=0.6)]
    assert select_best(trials, arm_plan({"val_accuracy": "max"}))[0].trial_id == "t1"


def test_all_failed_means_no_winner_and_names_the_commonest_cause(arm_plan):
    errors = ["Traceback ...\nCUDA out of memory", "ValueError: bad", "x\nCUDA out of memory"]
    trials = [trial(n, FAILED, error) for n, error in enumerate(errors)]
    best, reason = select_best(trials, arm_plan({"val_accuracy": "max"}))
    assert best is None
    assert reason == "all 3 trials failed; commonest cause (2x): CUDA out of memory"


# -- through the tracker: what the arm's MLflow run is told ------------------------------


class RecordingTracker:
    """Stands in for ``orchestrator.tracking.Tracker``: keeps what the winner logic tells it."""

    def __init__(self) -> None:
        self.tags: dict[str, dict[str, str]] = {}
        self.metrics: dict[str, dict[str, float]] = {}
        self.params: dict[str, dict[str, object]] = {}
        self.texts: dict[str, str] = {}
        self.artifacts: list[str] = []
        self.ended: dict[str, str] = {}

    def set_tags(self, run_id, tags):
        self.tags.setdefault(run_id, {}).update(tags)

    def log_metrics(self, run_id, metrics, step=None):
        self.metrics.setdefault(run_id, {}).update(metrics)

    def log_params(self, run_id, params):
        self.params.setdefault(run_id, {}).update(params)

    def log_text(self, run_id, text, artifact_file):
        self.texts[artifact_file] = text

    def log_artifacts(self, run_id, folder, artifact_path=None):
        self.artifacts += sorted(p.name for p in Path(folder).iterdir())

    def end_run(self, run_id, status="FINISHED"):
        self.ended[run_id] = status


class OneArmState:
    """Stands in for ``RunState``: the arm's finished search."""

    def __init__(self, trials: list[TrialRecord]) -> None:
        self.trials = trials

    def search_trials(self, arm: str) -> list[TrialRecord]:
        return list(self.trials)


def dominates(a: list[float], b: list[float], modes: list[str]) -> bool:
    better_or_equal = all((x >= y) if m == "max" else (x <= y) for x, y, m in zip(a, b, modes, strict=True))
    return better_or_equal and a != b


def test_the_winner_is_told_to_the_arms_run(arm_plan):
    tracker = RecordingTracker()
    trials = [trial(0, val_accuracy=0.7), trial(1, val_accuracy=0.9), trial(2, FAILED, "boom")]
    _, best, _ = pick_winner(tracker, OneArmState(trials), arm_plan({"val_accuracy": "max"}), "arm-run")
    assert best.trial_id == "t1"
    tags = tracker.tags["arm-run"]
    assert (tags["orchestrate.best_trial"], tags["orchestrate.best_run"]) == ("t1", "run1")
    assert tracker.metrics["arm-run"]["best_val_accuracy"] == 0.9
    assert (tracker.metrics["arm-run"]["trials_completed"], tracker.metrics["arm-run"]["trials_failed"]) == (2, 1)
    assert tracker.params["arm-run"] == {"best.lr": 0.001}
    assert "arm-run" not in tracker.ended  # the arm goes on to confirmation


def test_an_arm_whose_trials_all_failed_is_closed_failed(arm_plan):
    tracker = RecordingTracker()
    with pytest.raises(AllTrialsFailedError, match="arm 'arm': all 2 trials failed"):
        state = OneArmState([trial(0, FAILED, "boom"), trial(1, FAILED, "boom")])
        pick_winner(tracker, state, arm_plan({"val_accuracy": "max"}), "arm-run")
    assert tracker.ended == {"arm-run": "FAILED"}
    assert "all 2 trials failed" in tracker.tags["arm-run"]["orchestrate.error"]


def test_several_objectives_log_the_pareto_front_of_the_feasible_trials(arm_plan):
    plan = arm_plan({"val_accuracy": "max", "flops_ratio": "min"})
    points = [(0.90, 0.40), (0.85, 0.20), (0.80, 0.30), (0.70, 0.10), (0.95, 0.45), (0.60, 0.35)]
    trials = [trial(i, val_accuracy=a, flops_ratio=f) for i, (a, f) in enumerate(points)]
    trials += [trial(9, INFEASIBLE, val_accuracy=0.99, flops_ratio=0.05), trial(10, FAILED, "boom")]
    tracker = RecordingTracker()
    _, best, _ = pick_winner(tracker, OneArmState(trials), plan, "arm-run")
    modes = ["max", "min"]
    expected = {f"t{i}" for i, p in enumerate(points) if not any(dominates(list(q), list(p), modes) for q in points)}
    rows = json.loads(tracker.texts["pareto_front.json"])
    assert {row["trial_id"] for row in rows} == expected == {"t0", "t1", "t3", "t4"}
    assert all(row["feasible"] for row in rows)
    on_front = {run for run, tags in tracker.tags.items() if tags.get("orchestrate.pareto") == "true"}
    assert on_front == {f"run{t[1:]}" for t in expected}
    assert tracker.metrics["arm-run"]["pareto_size"] == 4
    assert "pareto_front.png" in tracker.artifacts
    assert best.trial_id == "t4"  # the winner itself is still the best by the first objective


def test_without_a_feasible_trial_the_front_of_the_infeasible_ones_is_logged_and_marked(arm_plan):
    plan = arm_plan({"val_accuracy": "max", "flops_ratio": "min"})
    trials = [
        trial(0, INFEASIBLE, val_accuracy=0.9, flops_ratio=0.8),
        trial(1, INFEASIBLE, val_accuracy=0.8, flops_ratio=0.9),
    ]
    tracker = RecordingTracker()
    log_pareto_front(tracker, "arm-run", trials, plan)
    rows = json.loads(tracker.texts["pareto_front.json"])
    assert [(row["trial_id"], row["feasible"]) for row in rows] == [("t0", False)]
    assert tracker.tags["run0"] == {"orchestrate.pareto": "infeasible"}


def test_a_single_objective_logs_no_front(arm_plan):
    tracker = RecordingTracker()
    pick_winner(tracker, OneArmState([trial(0, val_accuracy=0.7)]), arm_plan({"val_accuracy": "max"}), "arm-run")
    assert "pareto_front.json" not in tracker.texts and "pareto_size" not in tracker.metrics["arm-run"]
