"""Training precision (orchestrator.trial.precision): what ``auto`` picks, what forcing does,
that autocast really runs the model in the chosen dtype, and that the choice is recorded."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import torch

from orchestrator.spec.models import TaskSpec, TrainingSpec
from orchestrator.tasks.prepare import prepare_task
from orchestrator.trial import precision as precision_module
from orchestrator.trial.precision import PrecisionUnavailableError, resolve_precision
from orchestrator.trial.training import TrialSetup, run_trial


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    task = TaskSpec(
        model="random:bert-tiny",
        dataset="synthetic:polarity",
        max_length=32,
        train_examples=96,
        val_examples=32,
        test_examples=32,
    )
    return prepare_task(task, Path("."), tmp_path_factory.mktemp("cache"))


def trial(precision: str) -> TrialSetup:
    return TrialSetup(
        arm="a",
        method="lora",
        model="random:bert-tiny",
        metric="accuracy",
        training=TrainingSpec(epochs=1, batch_size=32, lr=1e-2, precision=precision),
        fixed={"r": 4},
    )


@pytest.mark.parametrize("native", [True, False], ids=["cpu-with-native-bf16", "cpu-without-native-bf16"])
def test_auto_takes_bf16_only_where_the_cpu_runs_it_natively(monkeypatch, native):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: native)
    choice = resolve_precision("auto", "cpu")
    assert choice.used == ("bf16" if native else "fp32")
    assert choice.native and choice.requested == "auto"


def test_forced_bf16_on_a_cpu_without_it_runs_bf16_and_says_it_is_emulated(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    choice = resolve_precision("bf16", "cpu")
    assert (choice.used, choice.native) == ("bf16", False)
    assert choice.as_params() == {"precision": "bf16", "precision_requested": "bf16", "precision_native": "false"}


def test_fp16_on_a_cpu_is_an_error_not_a_fallback():
    with pytest.raises(PrecisionUnavailableError, match="fp16 needs a GPU"):
        resolve_precision("fp16", "cpu")


def test_the_cpu_probe_agrees_with_the_cpu_flags():
    """Where /proc/cpuinfo exists, torch's probe must say what the flags say."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo on this platform")
    flags = set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    assert precision_module.cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16", "amx_tile"} & flags)


@pytest.mark.parametrize("forced", ["fp32", "bf16"])
def test_a_trial_runs_its_matmuls_in_the_forced_precision_and_reports_it(data, tmp_path, monkeypatch, forced):
    seen: list[torch.dtype] = []
    original = torch.nn.Linear.forward

    def spy(self, x):
        out = original(self, x)
        if self.training:
            seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", spy)
    reports = []
    final = run_trial(trial(forced), {}, 0, data, lambda m, a: reports.append(m), tmp_path)
    expected = torch.bfloat16 if forced == "bf16" else torch.float32
    assert seen and set(seen) == {expected}
    assert all(r["param.precision"] == forced and r["param.precision_requested"] == forced for r in reports)
    assert math.isfinite(final["val_loss"]) and math.isfinite(final["train_loss"])


def test_bf16_and_fp32_trials_learn_the_same_task(data, tmp_path):
    """Same seed, same data: bf16 autocast changes rounding, not what is learnt."""
    fp32 = run_trial(trial("fp32"), {}, 0, data, lambda m, a: None, tmp_path)
    bf16 = run_trial(trial("bf16"), {}, 0, data, lambda m, a: None, tmp_path)
    assert bf16["train_loss"] == pytest.approx(fp32["train_loss"], abs=0.05)
    assert bf16["val_accuracy"] == pytest.approx(fp32["val_accuracy"], abs=0.1)
    assert bf16["flops_ratio"] == fp32["flops_ratio"]  # FLOPs are counted outside autocast


def test_the_default_precision_of_a_new_hypothesis_is_auto():
    assert TrainingSpec().precision == "auto"


def _validate(tmp_path: Path, body: str) -> tuple[int, str]:
    import subprocess
    import sys

    path = tmp_path / "h.yaml"
    path.write_text(textwrap.dedent(body))
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "validate", str(path)], capture_output=True, text=True
    )
    return done.returncode, done.stdout + done.stderr


HEAD = """\
    name: p
    statement: s
    task: {model: random:bert-tiny, dataset: synthetic:polarity}
"""


def test_fp16_for_cpu_trials_is_refused_at_its_line(tmp_path):
    code, out = _validate(
        tmp_path,
        HEAD
        + """\
    arms:
      a: {method: lora}
      b:
        method: lora
        fixed: {precision: fp16}
    training: {precision: fp16}
    """,
    )
    assert code == 2
    assert "h.yaml:9: training.precision: fp16 needs a GPU" in out
    assert "h.yaml:8: arms.b.fixed.precision: fp16 needs a GPU" in out


def test_an_arm_may_fix_its_precision_and_a_bad_value_is_named(tmp_path):
    code, out = _validate(
        tmp_path,
        HEAD
        + """\
    arms:
      a: {method: lora, fixed: {precision: bf16}}
      b: {method: lora, fixed: {precision: fp8}}
    """,
    )
    assert code == 2
    assert "h.yaml:6: arms.b.fixed.precision" in out
    assert "arms.a" not in out  # bf16 is a valid choice for CPU trials


def test_a_local_run_warns_when_bf16_is_forced_on_a_cpu_that_emulates_it(monkeypatch):
    from orchestrator.spec.models import Hypothesis
    from orchestrator.trial.precision import emulated_bf16_warnings

    spec = Hypothesis(
        name="p",
        statement="s",
        arms={"a": {"method": "lora", "fixed": {"precision": "bf16"}}, "b": {"method": "lora"}},
    )
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    (warning,) = emulated_bf16_warnings(spec)
    assert "arms.a.fixed.precision" in warning and "emulate" in warning
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    assert emulated_bf16_warnings(spec) == []


def test_the_fp16_loss_scaler_unscales_before_clipping_and_steps_like_plain_training():
    """The GradScaler path (fp16 on GPUs), run on CPU in fp32: scaling the loss, then
    unscaling before clipping, must give the very step an unscaled loss gives."""
    from orchestrator.trial.precision import PrecisionChoice, grad_scaler
    from orchestrator.trial.training import _backward_and_step

    def one_step(scaler):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = model(torch.randn(8, 4)).pow(2).sum() * 100  # big gradients: clipping is active
        _backward_and_step(loss, model, optimizer, scaler, max_grad_norm=1.0)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    scaler = grad_scaler(PrecisionChoice("fp16", "fp16", True, "cpu"))
    assert scaler is not None and scaler.get_scale() > 1
    assert torch.allclose(one_step(scaler), one_step(None), atol=1e-6)
    assert grad_scaler(PrecisionChoice("bf16", "bf16", True, "cpu")) is None
