"""Finished trials kept across runs: a bigger search starts where a smaller one ended.

Raise ``trials_per_arm`` from 8 to 16 and run again: the 8 finished trials are told to
the sampler as they were (values, constraints, pruned or not) and only 8 new ones
train. A trial is reusable by any later search with the same *identity*: the task
(model, data fingerprint, split sizes), the training recipe, the method, its fixed
values and search space, the objectives, constraints, scheduler and seed. Anything
else changed (a different sampler, more trials, more confirmation seeds) keeps the
trials; a change to any of those fields starts a fresh archive.

Only trials that ended for a reason of the configuration are kept: COMPLETED,
STOPPED (early-stopped) and INFEASIBLE. FAILED trials are run again. ``--fresh`` and
``search.reuse_trials: false`` ignore the archive.

One JSON line per trial under ``.orchestrate/archive/<identity>.jsonl``, appended as
each trial ends (an interrupted search loses none); never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.results import COMPLETED, INFEASIBLE, STOPPED, TrialRecord

if TYPE_CHECKING:
    from orchestrator.plan import ArmPlan, Plan

REUSABLE = (COMPLETED, STOPPED, INFEASIBLE)


def search_identity(plan: "Plan", arm_plan: "ArmPlan", data_key: str) -> str:
    """What makes two searches' trials interchangeable (see the module docstring)."""
    h = plan.hypothesis
    fields: dict[str, Any] = {
        "data": data_key, "task": h.task.model_dump(), "training": h.training.model_dump(),
        "method": arm_plan.method, "fixed": arm_plan.fixed,
        "params": {k: v.model_dump() for k, v in sorted(arm_plan.params.items())},
        "objectives": arm_plan.objectives, "constraints": [str(c) for c in arm_plan.constraints],
        "scheduler": arm_plan.scheduler, "seed": h.search.seed,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]


class TrialArchive:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, identity: str) -> Path:
        return self.folder / f"{identity}.jsonl"

    def load(self, identity: str) -> list[TrialRecord]:
        """Reusable trials in the order they were archived, each once."""
        path = self._path(identity)
        if not path.exists():
            return []
        seen: dict[str, TrialRecord] = {}
        for line in path.read_text().splitlines():
            try:
                record = TrialRecord(**json.loads(line))
            except (ValueError, TypeError):
                continue  # a line cut short by a crash mid-write
            if record.status in REUSABLE:
                seen.setdefault(record.trial_id, record)
        return list(seen.values())

    def add(self, identity: str, records: list[TrialRecord]) -> None:
        """Append the reusable ones not archived yet."""
        known = {r.trial_id for r in self.load(identity)}
        fresh = [r for r in records if r.status in REUSABLE and r.trial_id not in known]
        if not fresh:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self._path(identity), "a", encoding="utf-8") as out:
            for record in fresh:
                out.write(json.dumps(asdict(record), default=str) + "\n")
            out.flush()
            os.fsync(out.fileno())
