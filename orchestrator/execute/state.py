"""What a run has done so far, persisted after every change, so nothing is lost.

One JSON file per (hypothesis, profile) under the state folder. It maps trials to
their MLflow runs (a resumed driver never logs a trial twice), marks which arms
finished their search and which rounds of confirmation (a rerun skips them), and keeps
the looks the judge took between rounds (a rerun continues from the last one, never
judging a look twice). Written atomically (write to a temporary file, then rename), so
a SIGKILL never leaves half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from orchestrator.results import FAILED


class RunState:
    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @classmethod
    def open(cls, folder: Path, hypothesis: str, profile: str, spec_sha256: str, fresh: bool) -> "RunState":
        path = folder / f"{hypothesis}--{profile}.json"
        if path.exists() and not fresh:
            data = json.loads(path.read_text())
            if data.get("spec_sha256") == spec_sha256 and not data.get("finished"):
                return cls(path, data)
        state = cls(path, {"spec_sha256": spec_sha256, "hypothesis": hypothesis, "profile": profile, "arms": {}, "finished": False})
        state.save()
        return state

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, **values: Any) -> None:
        self.data.update(values)
        self.save()

    def arm(self, arm: str) -> dict[str, Any]:
        return self.data["arms"].setdefault(arm, {"trial": {}, "confirm": {}, "records": {"trial": {}, "confirm": {}}})

    def records(self, arm: str, kind: str) -> dict[str, dict[str, Any]]:
        """Finished trials (TrialRecord fields) of an arm's search or confirmation."""
        return self.arm(arm).setdefault("records", {"trial": {}, "confirm": {}}).setdefault(kind, {})

    def set_record(self, arm: str, kind: str, trial_id: str, record: dict[str, Any]) -> None:
        self.records(arm, kind)[trial_id] = record
        self.save()

    def set_arm(self, arm: str, **values: Any) -> None:
        self.arm(arm).update(values)
        self.save()

    def search_finished(self, arm: str) -> bool:
        """The arm's search ran to its end and left a trial to confirm.

        An arm whose every trial failed is not finished: the cause is usually the
        machine (a missing package, no GPU), and a rerun after it is fixed must search
        the arm again, not repeat the stored failure (``reopen_search``)."""
        arm_state = self.arm(arm)
        return bool(arm_state.get("search_done")) and any(t.get("status") != FAILED for t in arm_state.get("trials", []))

    def searched_without_result(self, arm: str) -> bool:
        """The arm's search ran to its end and every trial failed."""
        return bool(self.arm(arm).get("search_done")) and not self.search_finished(arm)

    def reopen_search(self, arm: str) -> None:
        """Forget an arm's search whose every trial failed, so that it is searched
        again by a new Tuner. Its trial runs stay in MLflow as FAILED and stay mapped
        (new runs are numbered after them; ``_close_stale`` still sees them)."""
        arm_state = self.arm(arm)
        arm_state["search_done"] = False
        arm_state.pop("trials", None)
        arm_state.pop("trial_callback_key", None)  # else the finished Tuner is restored, with nothing left to run
        self.records(arm, "trial").clear()
        self.save()

    def trial_runs(self, arm: str, kind: str) -> dict[str, str]:
        return self.arm(arm)[kind]

    def trial_run(self, arm: str, kind: str, trial_id: str) -> str | None:
        return self.trial_runs(arm, kind).get(trial_id)

    def set_trial_run(self, arm: str, kind: str, trial_id: str, run_id: str) -> None:
        self.trial_runs(arm, kind)[trial_id] = run_id
        self.save()

    def confirm_round_done(self, arm: str, round_index: int) -> bool:
        return str(round_index) in self.arm(arm).get("confirm_rounds", {})

    def finish_confirm_round(self, arm: str, round_index: int, records: list[dict[str, Any]]) -> None:
        """The arm's confirmation runs of round ``round_index`` (1-based), all ended."""
        self.arm(arm).setdefault("confirm_rounds", {})[str(round_index)] = records
        self.save()

    def confirm_records(self, arm: str) -> list[dict[str, Any]]:
        """The arm's confirmation runs of every finished round, round after round."""
        rounds = self.arm(arm).get("confirm_rounds", {})
        return [record for key in sorted(rounds, key=int) for record in rounds[key]]

    def looks(self) -> list[dict[str, Any]]:
        """The looks taken so far (``execute.looks.Look.to_dict``), in order."""
        return list(self.data.get("looks", []))

    def add_look(self, look: dict[str, Any]) -> None:
        self.data.setdefault("looks", []).append(look)
        self.save()
