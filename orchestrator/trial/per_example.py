"""A confirmation run's per-example outcomes on the held-out split, as one JSON artifact.

Written by the trial (``orchestrator.trial.training``) into its artifacts, logged to the
run's MLflow artifacts by the recorder, and read back by the judge
(``orchestrator.judge.evidence``), which counts the test examples' sampling variance
and pairs arms example by example (``orchestrator.judge.examples``). Kept apart from
both so the judge never imports the training code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Folder of a confirmation run's artifacts that holds its per-example record,
#: ``<split>.json``; the judge reads it back (``orchestrator.judge.evidence``).
PER_EXAMPLE_FOLDER = "per_example"
PER_EXAMPLE_FORMAT = 1


@dataclass(frozen=True)
class PerExampleRecord:
    """The outcome of each held-out example in one confirmation run, so the judge can
    count the sampling variance of the test examples and pair arms example by example.

    ``labels_sha256`` (of the gold labels as int64 bytes) tells whether two runs scored
    the same examples in the same order. ``correct`` is one '0'/'1' character per
    example; ``loss`` is rounded to 5 decimals, so its mean is the reported loss to ~1e-5.

        >>> record = PerExampleRecord(split="test", metric="test_accuracy", labels_sha256="9f2c...",
        ...                           correct="110", pred=[1, 0, 0], loss=[0.1, 0.2, 2.5])
        >>> {name: values.tolist() for name, values in record.per_example_means().items()}
        {'test_accuracy': [1.0, 1.0, 0.0], 'test_loss': [0.1, 0.2, 2.5]}
    """

    split: str
    metric: str  # the reported metric, e.g. "test_accuracy"
    labels_sha256: str
    correct: str
    pred: list[int]
    loss: list[float]

    @property
    def n(self) -> int:
        return len(self.correct)

    @classmethod
    def of(
        cls, predictions: np.ndarray, gold: np.ndarray, losses: np.ndarray, split: str, metric: str
    ) -> PerExampleRecord:
        """From one evaluation pass, per example in split order."""
        gold = np.asarray(gold).astype(np.int64)
        correct = "".join("1" if hit else "0" for hit in (np.asarray(predictions) == gold))
        return cls(
            split=split,
            metric=metric,
            labels_sha256=hashlib.sha256(gold.tobytes()).hexdigest(),
            correct=correct,
            pred=[int(p) for p in predictions],
            loss=[round(float(x), 5) for x in losses],
        )

    @classmethod
    def from_json(cls, text: str) -> PerExampleRecord:
        """Parse ``<split>.json``; ValueError for another format, a missing field or
        inconsistent lengths."""
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("format") != PER_EXAMPLE_FORMAT:
            raise ValueError(f"not a per-example record of format {PER_EXAMPLE_FORMAT}")
        try:
            record = cls(
                split=str(raw["split"]),
                metric=str(raw["metric"]),
                labels_sha256=str(raw["labels_sha256"]),
                correct=str(raw["correct"]),
                pred=[int(p) for p in raw["pred"]],
                loss=[float(x) for x in raw["loss"]],
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"per-example record without a valid {exc}") from exc
        if not (record.n == raw.get("n") == len(record.pred) == len(record.loss)) or set(record.correct) - {"0", "1"}:
            raise ValueError("per-example record with inconsistent lengths or a 'correct' other than 0/1")
        return record

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": PER_EXAMPLE_FORMAT,
                "split": self.split,
                "metric": self.metric,
                "n": self.n,
                "labels_sha256": self.labels_sha256,
                "correct": self.correct,
                "pred": self.pred,
                "loss": self.loss,
            },
            separators=(",", ":"),
        )

    def write(self, artifacts: Path) -> Path:
        path = artifacts / PER_EXAMPLE_FOLDER / f"{self.split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    def per_example_means(self) -> dict[str, np.ndarray]:
        """Reported metric -> per-example values whose mean it is: accuracy (0/1) and the
        loss, under the reported metrics' prefix ("test"); a causal LM's exact match (its
        0/1 hits, gold 1) too. F1, MCC and perplexity are not means."""
        prefix = self.metric.split("_", 1)[0]
        correct = np.array([c == "1" for c in self.correct], dtype=float)
        means = {f"{prefix}_accuracy": correct, f"{prefix}_loss": np.asarray(self.loss, dtype=float)}
        if self.metric == f"{prefix}_exact_match":
            means[self.metric] = correct
        return means
