"""What the steps of one run share, bundled once so that no step takes it piece by piece."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.execute.archive import TrialArchive
    from orchestrator.execute.progress import Progress
    from orchestrator.execute.state import RunState
    from orchestrator.plan import Plan
    from orchestrator.tracking import Tracker


@dataclass
class RunContext:
    """What the steps of one run share: its plan, where it logs (MLflow, the hypothesis
    run) and persists (run state, Ray's storage), the live display and the task's data.

    ``data_ref`` is the tokenised task in Ray's object store (``ray.put``); ``archive``
    the finished trials of earlier runs to reuse (None: reuse is off or the run is
    fresh), looked up by ``data_key``, the cache key of the task's data."""

    plan: Plan
    tracker: Tracker
    experiment_id: str
    parent_id: str
    state: RunState
    storage: str
    progress: Progress
    data_ref: Any
    archive: TrialArchive | None
    data_key: str
