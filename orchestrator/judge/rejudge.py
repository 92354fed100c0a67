"""Judge a finished hypothesis again from MLflow alone, without training anything.

The samples (arm -> metric -> seed -> value) are rebuilt from the confirmation runs
(``orchestrate.level=confirm``, ``orchestrate.arm``, param ``seed``), the failed ones
with their error (tag ``orchestrate.error``), and each arm's method from the logged
``plan.json`` says which metrics are fixed by configuration; the claims registered
before the run (``expected.txt``) are judged with the settings of the logged
``plan.json``: this reproduces the run's verdicts exactly. A sequential confirmation
(``confirm.max_seeds``) is replayed look by look (``execute.looks.replay_looks``): the
seeds fall into the plan's rounds, an arm ran round k when it has that round's seeds,
and look k sees each arm's runs of rounds 1 .. k; the last look's verdicts are the
run's, and every look is compared with the logged ``looks.json``. Judging any other claims
(``--spec FILE`` with a changed ``expected:`` block) is POST-HOC: chosen after the data
were seen, so those verdicts are stored apart (``verdicts_posthoc.json``, tag
``orchestrate.posthoc=true``) and the report says so loudly.

    >>> judgement = rejudge(Tracker(uri), run_id)                 # doctest: +SKIP
    >>> judgement.reproduces_logged(), judgement.posthoc          # doctest: +SKIP
    (True, False)
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.report.collect import RunSummary, collect_summary

if TYPE_CHECKING:
    from orchestrator.execute.looks import Look
    from orchestrator.judge import Samples, Verdict
    from orchestrator.tracking import Tracker

POSTHOC_TAG = "orchestrate.posthoc"
POSTHOC_FILE = "verdicts_posthoc.json"


@dataclass
class Judgement:
    run_id: str
    claims: list[str]
    registered_claims: list[str]
    confidence: float
    family_wise: bool | None
    samples: Samples
    verdicts: list[Verdict]
    logged: list[Verdict]  # the verdicts logged at run time
    posthoc: bool = False
    spec_file: str | None = None
    notes: list[str] = field(default_factory=list)
    failed: dict[str, dict[int, str]] = field(default_factory=dict)  # arm -> seed -> error of failed confirmation runs
    looks: list[Look] = field(default_factory=list)  # replayed here, one per round some arm ran
    logged_looks: list[Look] = field(default_factory=list)  # looks.json of the run (none before rounds existed)

    def reproduces_logged(self) -> bool:
        """The registered claims' verdicts, and every look when the run logged them, as at run time."""
        looks_agree = not self.logged_looks or _looks(self.looks) == _looks(self.logged_looks)
        return not self.posthoc and _comparable(self.verdicts) == _comparable(self.logged) and looks_agree


def samples_from_summary(summary: RunSummary) -> Samples:
    """arm -> metric -> seed -> value from the confirmation runs the driver kept that did
    not fail (the failed ones are ``failures_from_summary``)."""
    from orchestrator.judge.evidence import confirmation_samples

    return confirmation_samples({arm.arm: arm.confirms for arm in summary.arms})


def failures_from_summary(summary: RunSummary) -> dict[str, dict[int, str]]:
    """arm -> seed -> error of every FAILED confirmation run, as the driver passed them."""
    from orchestrator.judge.evidence import failed_seeds

    return failed_seeds({arm.arm: arm.confirms for arm in summary.arms})


def exact_metrics_from_summary(summary: RunSummary) -> dict[str, frozenset[str]]:
    """arm -> the metrics its method fixes, the method read from the logged plan.json
    (the arm run's ``orchestrate.method`` tag where the plan does not name it)."""
    from orchestrator.judge.evidence import exact_metrics_of

    methods = {arm.arm: arm.method for arm in summary.arms}
    for arm_plan in summary.plan.get("arms") or []:
        if isinstance(arm_plan, dict) and arm_plan.get("arm") and arm_plan.get("method"):
            methods[str(arm_plan["arm"])] = str(arm_plan["method"])
    return exact_metrics_of(methods)


def rejudge(tracker: Tracker, run_id: str, spec_path: str | Path | None = None) -> Judgement:
    """Re-judge the registered claims, or, with ``spec_path``, that file's claims (with
    the run's profile applied); POST-HOC when they differ from the registered ones.
    Post-hoc claims are judged at the run's looks too, on the rounds its registered
    claims asked for."""
    from orchestrator.execute.looks import JudgeSettings, replay_looks

    summary = collect_summary(tracker, run_id, with_images=False, with_history=False)
    claims, confidence, family_wise = list(summary.claims), summary.confidence, summary.family_wise
    notes: list[str] = []
    posthoc = False
    if spec_path is not None:
        from orchestrator.spec.loader import load_hypothesis

        profile = summary.profile if summary.profile != "default" else None
        h = load_hypothesis(spec_path, profile, check_requirements=False).hypothesis  # judging trains nothing
        if h.name != summary.hypothesis:
            notes.append(f"{spec_path} is hypothesis {h.name!r}, the run is {summary.hypothesis!r}")
        claims, confidence, family_wise = list(h.expected), h.judge.confidence, h.judge.family_wise
        posthoc = _normal(claims) != _normal(summary.claims) or (confidence, family_wise) != (
            summary.confidence,
            summary.family_wise,
        )
    samples, failed = samples_from_summary(summary), failures_from_summary(summary)
    settings = JudgeSettings(
        claims, summary.confirm_rounds, confidence, family_wise, exact_metrics_from_summary(summary)
    )
    looks = replay_looks(settings, {arm.arm: arm.confirms for arm in summary.arms}, tracker)
    if not posthoc:
        notes += _continuation_notes(looks)
    notes += list(dict.fromkeys(note for look in looks for note in look.notes))
    verdicts = looks[-1].verdicts if looks else []
    return Judgement(
        run_id,
        claims,
        list(summary.claims),
        confidence,
        family_wise,
        samples,
        verdicts,
        summary.verdicts,
        posthoc,
        str(spec_path) if spec_path is not None else None,
        notes,
        failed,
        looks,
        summary.looks,
    )


def _continuation_notes(looks: list[Look]) -> list[str]:
    """Where the runs disagree with what the looks decided: the arms that ran round k + 1
    are the ones look k sent on (confirmation runs deleted or added by hand break this)."""
    notes = []
    for look, after in pairwise(looks):
        ran = sorted(arm for arm, seeds in after.seeds.items() if len(seeds) > len(look.seeds.get(arm, [])))
        if ran != sorted(look.continuing):
            notes.append(
                f"look {look.index} sends {', '.join(look.continuing) or 'no arm'} to round {after.index}, "
                f"but the runs of round {after.index} are of {', '.join(ran) or 'no arm'}"
            )
    if looks and looks[-1].continuing:
        notes.append(
            f"look {looks[-1].index} sends {', '.join(looks[-1].continuing)} to round {looks[-1].index + 1}, "
            "which has no confirmation run: the run did not finish, or its runs were deleted"
        )
    return notes


def record_posthoc(tracker: Tracker, judgement: Judgement) -> None:
    """Store a post-hoc judgement apart from the registered verdicts (never over them)."""
    judged_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    payload = {
        "posthoc": True,
        "judged_at": judged_at,
        "spec_file": judgement.spec_file,
        "registered_claims": judgement.registered_claims,
        "claims": judgement.claims,
        "confidence": judgement.confidence,
        "family_wise": judgement.family_wise,
        "samples": judgement.samples,
        "failed": judgement.failed,
        "verdicts": [v.model_dump() for v in judgement.verdicts],
        "looks": [look.to_dict() for look in judgement.looks],
    }
    tracker.log_text(judgement.run_id, json.dumps(payload, indent=1, default=str), POSTHOC_FILE)
    tags = {
        POSTHOC_TAG: "true",
        "orchestrate.posthoc_judged_at": judged_at,
        "orchestrate.posthoc_spec": judgement.spec_file or "",
    }
    tags |= {f"posthoc_verdict.{i}": f"{v.verdict}: {v.claim}" for i, v in enumerate(judgement.verdicts)}
    tracker.set_tags(judgement.run_id, tags)


def _normal(claims: list[str]) -> list[str]:
    """Claims compared by meaning: '1%' and '0.01', spacing and order do not matter."""
    from orchestrator.claims import parse_claim

    out = []
    for text in claims:
        try:
            out.append(parse_claim(text).canonical())
        except ValueError:
            out.append(" ".join(text.split()))
    return sorted(out)


def _comparable(verdicts: list[Verdict]) -> str:
    return json.dumps([v.model_dump() for v in verdicts], sort_keys=True, default=str)


def _looks(looks: list[Look]) -> str:
    return json.dumps([look.to_dict() for look in looks], sort_keys=True, default=str)
