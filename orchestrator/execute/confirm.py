"""Confirm every arm's winner on fresh seeds, round after round, and judge: the driver's
second half (``execute.runner`` does the search and calls ``confirm_arms``).

A round is one Tuner (``tuning.run_confirm``) over the arms still going; after each round
the judge looks (``execute.looks.take_look``: each look at its share of alpha) and only
the arms of claims still open that more seeds could settle go on. Without
``confirm.max_seeds`` that is one round and one look. Rounds and looks are saved in the
run state as they finish, so a rerun after a kill resumes the round in flight (its Tuner
restored) and never repeats a seed; the looks go to MLflow as ``looks.json``, a tag per
look and the metric ``confirm_looks``, and the final verdicts as ``verdicts.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.execute.looks import JudgeSettings, Look, round_of, take_look
from orchestrator.execute.mlflow_runs import base_tags, close_stale
from orchestrator.execute.recorder import TrialRecorder
from orchestrator.execute.run_context import RunContext
from orchestrator.plan import ArmPlan, Plan
from orchestrator.results import FAILED, ArmOutcome, RunKind, TrialRecord
from orchestrator.tracking import Tracker
from orchestrator.trial.training import TrialSetup

if TYPE_CHECKING:
    from orchestrator.execute.tuning import ConfirmRound
    from orchestrator.judge import Verdict


@dataclass
class SearchedArm:
    """An arm whose search is done: what its confirmation needs."""

    plan: ArmPlan
    arm_run: str
    setup: TrialSetup
    trials: list[TrialRecord]
    best: TrialRecord
    reason: str
    run_name: str


def confirm_arms(searched: list[SearchedArm], run: RunContext, judging: bool) -> tuple[list[ArmOutcome], list[Look]]:
    """Every searched arm's winner on fresh seeds, round after round, with a look of the
    judge after each (``judging``: else one round and no look); then the arm runs close.

    A round and a look, once in the run state, are never repeated: a rerun after a kill
    starts from the first round an arm has not finished (its Tuner restored when the kill
    came during it) or from the look not yet taken."""
    from orchestrator.execute.tuning import ConfirmRound

    settings = _judge_settings(run.plan)
    by_arm = {s.plan.arm: s for s in searched}
    looks = [Look.from_dict(look).in_order(by_arm) for look in run.state.looks()]
    if looks:  # a kill may have come between saving a look and logging it
        _log_looks(run.tracker, run.parent_id, looks)
    in_round = list(by_arm)
    for index, seeds in enumerate(settings.rounds if judging else settings.rounds[:1], 1):
        if index > 1:
            in_round = [arm for arm in looks[index - 2].continuing if arm in by_arm]
            if not in_round:
                break
        _confirm_round(ConfirmRound(index, seeds), [by_arm[arm] for arm in in_round], run)
        if judging and len(looks) < index:
            runs = {arm: run.state.confirm_records(arm) for arm in by_arm}
            run.progress.phase(f"judging: look {index}, {len(settings.claims)} claims")
            looks.append(take_look(settings, runs, index, looks[-1] if looks else None, run.tracker))
            run.state.add_look(looks[-1].to_dict())
            _log_looks(run.tracker, run.parent_id, looks)
            run.progress.line(_look_line(looks[-1]))
    outcomes = []
    for s in searched:
        arm = s.plan.arm
        confirm = run.state.confirm_records(arm)
        finished = [c for c in confirm if c.status != FAILED]
        rounds = len({round_of(c.seed, settings.rounds) for c in confirm})
        run.tracker.log_metrics(
            s.arm_run,
            {"confirm_runs": len(finished), "confirm_failed": len(confirm) - len(finished), "confirm_rounds": rounds},
        )
        run.tracker.end_run(s.arm_run, "FINISHED")
        outcomes.append(ArmOutcome(arm, s.plan.method, s.trials, s.best, s.reason, confirm))
    return outcomes, looks


def _judge_settings(plan: Plan) -> JudgeSettings:
    """The run's claims and judge settings, the same at every look."""
    from orchestrator.judge import evidence

    exact = evidence.exact_metrics_of({arm.arm: arm.method for arm in plan.arms})
    return JudgeSettings(
        list(plan.judge.claims), plan.confirm.rounds, plan.judge.confidence, plan.judge.family_wise, exact
    )


def _confirm_round(confirm_round: ConfirmRound, arms: list[SearchedArm], run: RunContext) -> None:
    """One round's seeds for the arms in it that have not run them yet, in one Tuner."""
    from orchestrator.execute.tuning import ConfirmRequest, run_confirm

    plan, tracker, state = run.plan, run.tracker, run.state
    phase = "confirm" if confirm_round.index == 1 else f"confirm {confirm_round.index}"
    requests = []
    for s in arms:
        arm = s.plan.arm
        if state.confirm_round_done(arm, confirm_round.index):
            continue
        close_stale(tracker, state.trial_runs(arm, RunKind.CONFIRM))
        recorder = TrialRecorder(
            tracker,
            run.experiment_id,
            s.arm_run,
            arm,
            RunKind.CONFIRM,
            plan.training.epochs,
            [],
            state,
            run.progress.arm(
                arm,
                phase,
                len(confirm_round.seeds),
                f"test_{plan.task.metric}",
                "max",
                tuple(name for name in s.plan.objectives if not name.startswith("val_")),  # held-out split
            ),
            base_tags(plan, s.plan) | {"orchestrate.confirm_split": plan.confirm.split},
            [],
            static_params=dict(s.best.params),
            timeout_s=plan.search.trial_timeout_s,
        )
        requests.append(ConfirmRequest(s.plan, s.setup, s.best.params, recorder))
    if requests:
        seeds = ", ".join(map(str, confirm_round.seeds))
        names = ", ".join(r.plan.arm for r in requests)
        run.progress.phase(f"confirmation round {confirm_round.index}: {names} on seeds {seeds}")
    run_name = arms[0].run_name if arms else ""
    confirmed = run_confirm(
        requests, confirm_round, plan.confirm.split, plan.search, run.data_ref, run.storage, run_name
    )
    for arm, records in confirmed.items():
        state.finish_confirm_round(arm, confirm_round.index, records)


def _log_looks(tracker: Tracker, parent_id: str, looks: list[Look]) -> None:
    """Every look so far on the hypothesis run: ``looks.json`` (seeds per arm, alpha,
    verdicts, the arms that went on), a tag per look and the count ``confirm_looks``."""
    tracker.log_text(parent_id, json.dumps([look.to_dict() for look in looks], indent=1, default=str), "looks.json")
    tracker.set_tags(parent_id, {f"look.{look.index}": _look_line(look) for look in looks})
    tracker.log_metrics(parent_id, {"confirm_looks": len(looks)}, step=len(looks))


def _look_line(look: Look) -> str:
    """'look 1 (small=2, large=2 seeds; alpha 0.031): #1 SUPPORTED; go on: large'."""
    seeds = ", ".join(f"{arm}={len(s)}" for arm, s in look.seeds.items())
    settled = ", ".join(f"#{number} {v.verdict}" for number, v in look.settled_here()) or "nothing settled"
    after = "go on: " + ", ".join(look.continuing) if look.continuing else "no arm goes on"
    return f"look {look.index} ({seeds} seeds; alpha {look.alpha:.3g}): {settled}; {after}"


def judge_and_log(run: RunContext, arms: list[ArmOutcome], looks: list[Look]) -> list[Verdict]:
    """The run's verdicts are its last look's (``take_look`` judged them: a failed seed is
    passed on, its claims INCONCLUSIVE, never judged on the survivors, and so are the
    metrics each arm's method fixes, the only ones a zero spread may compare exactly);
    logged with every confirmation value and every look."""
    from orchestrator.judge import evidence

    plan, tracker, parent_id = run.plan, run.tracker, run.parent_id
    runs_by_arm = {outcome.arm: outcome.confirm for outcome in arms}
    samples, failed = evidence.confirmation_samples(runs_by_arm), evidence.failed_seeds(runs_by_arm)
    exact = evidence.exact_metrics_of({arm.arm: arm.method for arm in plan.arms})
    verdicts = looks[-1].verdicts if looks else []
    tags, metrics = {}, {}
    for index, verdict in enumerate(verdicts):
        tags[f"verdict.{index}"] = f"{verdict.verdict}: {verdict.claim}"
        metrics[f"claim_{index}_estimate"] = verdict.estimate
        metrics[f"claim_{index}_ci_low"] = verdict.ci_low
        metrics[f"claim_{index}_ci_high"] = verdict.ci_high
        metrics[f"claim_{index}_supported"] = 1.0 if verdict.verdict == "SUPPORTED" else 0.0
    tracker.set_tags(parent_id, tags)
    tracker.log_metrics(parent_id, {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v == v})
    logged = {
        "samples": samples,
        "failed": failed,
        "exact_metrics": {arm: sorted(names) for arm, names in exact.items()},
        "verdicts": [v.model_dump() for v in verdicts],
        "looks": [look.to_dict() for look in looks],
    }
    tracker.log_text(parent_id, json.dumps(logged, indent=1, default=str), "verdicts.json")
    return verdicts
