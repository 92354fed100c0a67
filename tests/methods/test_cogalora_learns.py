"""CoGaLoRA's routers are not penalised before its adapters can have learned anything.

The default run of hypotheses/cogalora.yaml (64 steps) confirmed CoGaLoRA at chance:
with a routing warmup of 10% the penalty started inside the trainer's learning-rate
warmup, while the adapters were still ~0, so the routers saw only the penalty and shut
the gates before the adapters learned (measurements in methods/cogalora.py's docstring).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from methods.cogalora import CoGaLoRA
from orchestrator.spec.models import TaskSpec, TrainingSpec
from orchestrator.tasks.prepare import prepare_task
from orchestrator.trial.training import TrialSetup, run_trial

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    task = TaskSpec(
        model="random:bert-tiny",
        dataset="synthetic:polarity",
        max_length=32,
        train_examples=320,
        val_examples=32,
        test_examples=32,
    )
    return prepare_task(task, Path("."), tmp_path_factory.mktemp("cache"))


def test_default_penalty_starts_after_the_trainers_learning_rate_warmup(data, tmp_path, monkeypatch):
    penalised: list[int] = []
    sampled_gates: list[int] = []
    extra_loss = CoGaLoRA.extra_loss

    def recording_extra_loss(self, model, step):
        if any(layer.last_prob is not None and not layer.schedule.in_warmup for layer in self.layers(model)):
            sampled_gates.append(step.step)  # the gates of this step were sampled, not forced on
        penalty = extra_loss(self, model, step)
        if penalty is not None:
            penalised.append(step.step)
        return penalty

    monkeypatch.setattr(CoGaLoRA, "extra_loss", recording_extra_loss)
    training = TrainingSpec(epochs=1, batch_size=16)  # the trainer's default warmup_ratio
    setup = TrialSetup(
        arm="a", method="cogalora", model="random:bert-tiny", metric="accuracy", training=training, fixed={"r": 8}
    )
    run_trial(setup, {"lr": 1e-2}, 0, data, lambda m, a: None, tmp_path)

    total_steps = 320 // 16
    lr_warmup_steps = int(training.warmup_ratio * total_steps)  # as run_trial's scheduler
    assert penalised and sampled_gates  # routing does start within the run
    assert min(penalised) >= lr_warmup_steps
    assert min(sampled_gates) >= lr_warmup_steps
