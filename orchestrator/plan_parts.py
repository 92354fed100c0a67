"""The run-level parts of a ``Plan``: what is the same for every arm.

A ``Plan`` (``orchestrator.plan``) holds one ``ArmPlan`` per arm (what each arm searches
and how) and, beside them, these parts, one per concern, like Ray Tune's split of
``TuneConfig`` / ``RunConfig``: ``SearchSettings`` (how every search runs: resources,
concurrency, retries, limits), ``ConfirmPlan`` (the fresh seeds, round by round, and the
split they are evaluated on) and ``JudgePlan`` (the registered claims and how they are
judged). The execute stage reads these, never the spec's ``Hypothesis``: whatever a
later stage needs from the spec is copied here by ``plan.make_plan``.

    >>> ConfirmPlan(seeds=2, split="test", first_seed=10, max_seeds=5, rounds=[[10, 11], [12, 13], [14]]).max_per_arm
    5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.spec.models import Resources


@dataclass(frozen=True)
class SearchSettings:
    """How every arm's search runs, the same for all arms (they share one Tuner).

    Attributes:
        seed: seed of every search trial (each arm's sampler has its own, in ``SamplerPlan``);
            part of a search's identity in the trial archive.
        max_concurrent: trials running at once, over all arms (``search.max_concurrent``,
            default: as many as the local CPUs hold, ``plan.default_concurrency``).
        resources: what each trial asks Ray for (CPUs, GPUs, memory, custom resources);
            also every confirmation run's.
        max_retries: retries of a trial whose worker was lost (a trial's own error is
            never retried); Ray Tune's ``FailureConfig(max_failures=...)``.
        trial_timeout_s: a trial running longer fails with that reason; None: no limit.
        trial_memory_mb: a trial peaking above this much memory fails with that reason;
            None: no limit.
        reuse_trials: start each search from the finished trials of earlier runs with
            the same identity (``execute.archive``).
    """

    seed: int
    max_concurrent: int
    resources: Resources
    max_retries: int
    trial_timeout_s: float | None
    trial_memory_mb: float | None
    reuse_trials: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "max_concurrent": self.max_concurrent,
            "resources": self.resources.model_dump(),
            "max_retries": self.max_retries,
            "trial_timeout_s": self.trial_timeout_s,
            "trial_memory_mb": self.trial_memory_mb,
            "reuse_trials": self.reuse_trials,
        }


@dataclass(frozen=True)
class ConfirmPlan:
    """How each arm's winner is confirmed: on fresh seeds, round after round.

    Attributes:
        seeds: seeds per round (``confirm.seeds``).
        split: the split every confirmation run is evaluated on (``test`` unless the
            hypothesis says ``validation``).
        first_seed: the first fresh seed; the others follow it.
        max_seeds: the most seeds an arm gets over all rounds (sequential confirmation);
            None: one round of ``seeds``.
        rounds: the seeds of each round (``plan.confirm_rounds``), fixed by the spec alone,
            so every arm in a round runs the same seeds.
    """

    seeds: int
    split: str
    first_seed: int
    max_seeds: int | None
    rounds: list[list[int]]

    @property
    def max_per_arm(self) -> int:
        """The seeds an arm runs when it goes through every round."""
        return sum(len(seeds) for seeds in self.rounds)

    def to_dict(self) -> dict[str, Any]:
        """The keys of the spec's ``confirm`` section, as the report reads them back from
        ``plan.json`` (``report.collect``)."""
        return {"seeds": self.seeds, "split": self.split, "first_seed": self.first_seed, "max_seeds": self.max_seeds}


@dataclass(frozen=True)
class JudgePlan:
    """What is judged and how, the same at every look.

    Attributes:
        claims: the registered claims (the spec's ``expected``), in their order.
        confidence: the confidence of every interval and test (1 - alpha).
        family_wise: Holm's correction across the claims; None: on when there are several.
    """

    claims: list[str]
    confidence: float
    family_wise: bool | None

    def to_dict(self) -> dict[str, Any]:
        """The keys of the spec's ``judge`` section (the claims go to ``expected``)."""
        return {"confidence": self.confidence, "family_wise": self.family_wise}
