"""The looks of a sequential confirmation: what the judge saw at each, what it said, and
which arms went on.

``confirm: {seeds: 2, max_seeds: 6}`` confirms in rounds of 2 seeds (``Plan.confirm.rounds``).
After each round the judge looks (``judge.sequential.judge_look``, each look at its share
of alpha); the arms of the claims still open that more seeds could settle get the next
round, the others stop. Without ``max_seeds`` there is one round and one look, which is
the plain ``judge_claims``.

The driver takes the looks as its rounds finish (``execute.confirm``); ``orchestrate
judge`` replays them from MLflow (``rejudge``). Both go through ``take_look``, so a
re-judgement sees at each look exactly the runs the driver saw: for every arm, the seeds
of the rounds it ran up to that look, nothing of a later round.

    >>> settings = JudgeSettings(["a.acc >= 0.5"], [[1, 2], [3, 4]], 0.95, None, {})
    >>> round_of(3, settings.rounds), settings.sizes
    (2, [2, 4])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator.judge import Verdict, evidence

if TYPE_CHECKING:
    from orchestrator.tracking import Tracker

SETTLED = ("SUPPORTED", "REFUTED")
Run = TypeVar("Run", bound=evidence.ConfirmRun)


@dataclass(frozen=True)
class JudgeSettings:
    """How every look judges: the registered claims, the planned rounds' seeds and the
    plan's judge settings (the run's ``Plan``, or the logged ``plan.json``)."""

    claims: list[str]
    rounds: list[list[int]]
    confidence: float
    family_wise: bool | None
    exact_metrics: Mapping[str, frozenset[str]]

    @property
    def sizes(self) -> list[int]:
        """Seeds per arm at each planned look (``judge.sequential.look_sizes``)."""
        return [sum(len(seeds) for seeds in self.rounds[: k + 1]) for k in range(len(self.rounds))]


@dataclass(frozen=True)
class Look:
    """One look: the seeds the judge saw per arm, the share of alpha it spent, every
    claim's verdict (a claim settled earlier keeps its verdict, and its ``look``), the
    arms that go on to the next round, and notes on the evidence (per-example outcomes
    that could not be used)."""

    index: int
    seeds: dict[str, list[int]]
    alpha: float
    verdicts: list[Verdict]
    continuing: list[str]
    notes: list[str] = field(default_factory=list)

    def settled_here(self) -> list[tuple[int, Verdict]]:
        """(claim number, 1-based; verdict) of the claims this look settled."""
        return [(i + 1, v) for i, v in enumerate(self.verdicts) if v.verdict in SETTLED and v.look == self.index]

    def in_order(self, arms: Iterable[str]) -> Look:
        """The same look with its arms in ``arms``' order (the run state keeps JSON keys sorted)."""
        order = list(arms)
        return replace(
            self,
            seeds=dict(
                sorted(self.seeds.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order))
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "seeds": self.seeds,
            "seeds_per_arm": {arm: len(s) for arm, s in self.seeds.items()},
            "alpha": self.alpha,
            "verdicts": [v.model_dump() for v in self.verdicts],
            "continuing": self.continuing,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Look:
        return cls(
            int(data["index"]),
            {str(arm): [int(s) for s in seeds] for arm, seeds in data["seeds"].items()},
            float(data["alpha"]),
            [Verdict.model_validate(v) for v in data["verdicts"]],
            [str(a) for a in data["continuing"]],
            [str(n) for n in data.get("notes", [])],
        )


def round_of(seed: int | None, rounds: list[list[int]]) -> int:
    """The round (1-based) whose seeds hold ``seed``. A seed of no planned round (a run
    confirmed before its plan had rounds, or without a seed) counts to the last round, so
    a plan with one round sees every run, as the judge did before rounds."""
    return next((k for k, seeds in enumerate(rounds, 1) if seed in seeds), len(rounds))


def runs_through(
    runs_by_arm: Mapping[str, Iterable[Run]], rounds: list[list[int]], index: int
) -> dict[str, list[Run]]:
    """Each arm's runs of rounds 1 .. ``index``: what look ``index`` may see."""
    return {arm: [run for run in runs if round_of(run.seed, rounds) <= index] for arm, runs in runs_by_arm.items()}


def take_look(
    settings: JudgeSettings,
    runs_by_arm: Mapping[str, list[Any]],
    index: int,
    previous: Look | None,
    tracker: Tracker,
) -> Look:
    """Judge look ``index`` on ``runs_by_arm`` (each arm's confirmation runs of the rounds
    it ran so far: the driver's ``TrialRecord``s or the report's ``RunRecord``s).

    An arm goes on when a claim still open names it and more seeds could settle that
    claim (``arms_needing_seeds``), and it ran this look's round: an arm that stopped
    stays stopped, so every round's arms share its seeds. After the last planned look no
    arm goes on."""
    from orchestrator.judge.sequential import arms_needing_seeds, judge_look, look_alpha

    sizes = settings.sizes
    seeds = {arm: sorted({int(run.seed) for run in runs if run.seed is not None}) for arm, runs in runs_by_arm.items()}
    alpha = look_alpha(1.0 - settings.confidence, index, sizes)
    if not settings.claims:
        return Look(index, seeds, alpha, [], [])
    per_example, notes = evidence.per_example_outcomes(tracker, runs_by_arm)
    verdicts = judge_look(
        settings.claims,
        evidence.confirmation_samples(runs_by_arm),
        look=index,
        sizes=sizes,
        previous=previous.verdicts if previous else None,
        confidence=settings.confidence,
        family_wise=settings.family_wise,
        exact_metrics=settings.exact_metrics,
        failed=evidence.failed_seeds(runs_by_arm),
        per_example=per_example,
    )
    in_round = {arm for arm, arm_seeds in seeds.items() if set(arm_seeds) & set(settings.rounds[index - 1])}
    continuing = (
        []
        if index == len(sizes)
        else [arm for arm in arms_needing_seeds(settings.claims, verdicts) if arm in in_round]
    )
    return Look(index, seeds, alpha, verdicts, continuing, notes)


def replay_looks(settings: JudgeSettings, runs_by_arm: Mapping[str, list[Any]], tracker: Tracker) -> list[Look]:
    """The looks of a finished confirmation, taken again on its runs: look k on the runs
    of rounds 1 .. k, for as many rounds as some arm ran."""
    looks: list[Look] = []
    for index in range(1, len(settings.rounds) + 1):
        if index > 1 and not any(
            round_of(run.seed, settings.rounds) == index for runs in runs_by_arm.values() for run in runs
        ):
            break
        looks.append(
            take_look(
                settings,
                runs_through(runs_by_arm, settings.rounds, index),
                index,
                looks[-1] if looks else None,
                tracker,
            )
        )
    return looks
