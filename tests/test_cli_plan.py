"""``orchestrate plan``: the compiled searches, printed (or as JSON) without running anything.

What a user reads before spending hours of compute: every arm with its method, the
space it searches (fixed values taken out), its sampler, objectives, constraints and
trial budget, and the claims to be judged. Checked against the spec itself, so a change
to a shipped file does not break these tests but a plan that drifts from its spec does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.spec.loader import load_hypothesis

ROOT = Path(__file__).resolve().parent.parent
LORA_RANK = ROOT / "hypotheses" / "lora_rank.yaml"
COGALORA = ROOT / "hypotheses" / "cogalora.yaml"
CORPUS = Path(__file__).resolve().parent / "bad_inputs"

OWN_SPACE = """\
method: lora
params:
  r: {type: categorical, choices: [2, 4, 8]}
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  lora_dropout: {type: float, low: 0.0, high: 0.3}
defaults: {r: 4, lr: 1.0e-3, lora_dropout: 0.1}
"""

OWN_HYPOTHESIS = """\
name: plan-test
statement: a hypothesis whose plan is checked line by line
task: {model: random:bert-tiny, dataset: synthetic:polarity, max_length: 32}
arms:
  narrow: {method: lora, space: space.yaml, fixed: {r: 2}}
  searched: {method: lora, space: space.yaml}
training: {epochs: 1, batch_size: 16, lr: 1.0e-3}
search:
  sampler: random
  objectives: {val_accuracy: max}
  trials_per_arm: 5
  max_concurrent: 2
  scheduler: fifo
  constraints: ['narrow: trainable_params <= 100000']
confirm: {seeds: 3, split: test}
expected:
  - narrow.test_accuracy >= searched.test_accuracy - 0.05
profiles:
  quick: {search: {trials_per_arm: 1}}
"""


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Rich wraps at the terminal's width; a wide one keeps each plan line on one line."""
    monkeypatch.setenv("COLUMNS", "1000")


def plan_lines(capsys, *args: str) -> list[str]:
    capsys.readouterr()
    assert main(["plan", *args]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out.splitlines()


def arm_block(lines: list[str], arm: str) -> list[str]:
    """The lines of one arm: from its ``arm NAME:`` line to the next blank line."""
    start = next(i for i, line in enumerate(lines) if line.startswith(f"arm {arm}:"))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


@pytest.fixture
def own_hypothesis(tmp_path: Path) -> Path:
    (tmp_path / "space.yaml").write_text(OWN_SPACE)
    path = tmp_path / "plan.yaml"
    path.write_text(OWN_HYPOTHESIS)
    return path


def test_a_shipped_hypothesis_plans_every_arm_with_its_space_sampler_and_trials(capsys):
    loaded = load_hypothesis(LORA_RANK)
    h = loaded.hypothesis
    lines = plan_lines(capsys, str(LORA_RANK))
    assert lines[0] == f"{h.name} profile=default  spec sha256 {loaded.sha256[:12]}"
    assert [line.split(":")[0] for line in lines if line.startswith("arm ")] == [f"arm {name}" for name in h.arms]
    for name, arm in h.arms.items():
        space = loaded.spaces[name]
        block = arm_block(lines, name)
        assert block[0] == f"arm {name}: method {arm.method}, space {space.path}"
        searched = [line.split()[1].rstrip(":") for line in block if line.strip().startswith("search ")]
        assert searched == [p for p in space.space.params if p not in arm.fixed]
        fixed = [line.strip() for line in block if line.strip().startswith("fixed ")]
        assert fixed == [f"fixed  {k} = {v}" for k, v in arm.fixed.items()]
        assert any(line.strip().startswith(f"sampler {h.search.sampler} (seed {h.search.seed}") for line in block)
        budget = f"{h.search.trials_per_arm} trials, {h.search.max_concurrent} at a time"
        assert any(line.strip().startswith(budget) for line in block)
    assert [line for line in lines if line.startswith("expected: ")] == [f"expected: {claim}" for claim in h.expected]


def test_a_profile_changes_what_is_planned(capsys):
    smoke = load_hypothesis(LORA_RANK, "smoke").hypothesis
    default, profiled = plan_lines(capsys, str(LORA_RANK)), plan_lines(capsys, str(LORA_RANK), "--profile", "smoke")
    assert profiled[0].startswith(f"{smoke.name} profile=smoke ")
    assert profiled[1].startswith(f"task: {smoke.task.type} {smoke.task.model} on {smoke.task.dataset} ")
    assert default[1] != profiled[1]
    block = arm_block(profiled, next(iter(smoke.arms)))
    assert any(line.strip().startswith(f"{smoke.search.trials_per_arm} trials, 1 at a time") for line in block)
    assert f"confirm: best config per arm x {smoke.confirm.seeds} fresh seeds on the test split" in profiled


def test_the_printed_plan_of_a_small_spec_line_by_line(own_hypothesis, capsys):
    lines = plan_lines(capsys, str(own_hypothesis))
    space = own_hypothesis.parent / "space.yaml"
    assert arm_block(lines, "narrow") == [
        f"arm narrow: method lora, space {space}",
        "    search lr: [0.0001,0.01 log]",
        "    search lora_dropout: [0,0.3]",
        "    fixed  r = 2",
        "    first point (paper defaults): {'lr': 0.001, 'lora_dropout': 0.1}",
        "    sampler random (seed 0); objectives val_accuracy max",
        "    constraints trainable_params <= 100000; scheduler fifo",
        "    5 trials, 2 at a time, each with cpu=1; up to 1 retry if its worker is lost",
    ]
    searched = arm_block(lines, "searched")
    assert "    search r: {2,4,8}" in searched  # not fixed in this arm: searched
    assert "    constraints none; scheduler fifo" in searched  # the constraint is scoped to narrow
    assert "expected: narrow.test_accuracy >= searched.test_accuracy - 0.05" in lines


def test_a_multi_objective_plan_names_every_objective_and_marks_the_routed_arm(capsys):
    h = load_hypothesis(COGALORA, "smoke").hypothesis
    lines = plan_lines(capsys, str(COGALORA), "--profile", "smoke")
    objectives = ", ".join(f"{k} {v}" for k, v in h.search.objectives.items())
    assert len(h.search.objectives) > 1
    for name in h.arms:
        assert any(line.strip().endswith(f"objectives {objectives}") for line in arm_block(lines, name))
    assert arm_block(lines, "cogalora")[0].startswith("arm cogalora: method cogalora (routed), ")
    assert arm_block(lines, "lora")[0].startswith("arm lora: method lora, ")


def test_json_plan_holds_the_same_searches(own_hypothesis, capsys):
    capsys.readouterr()
    assert main(["plan", str(own_hypothesis), "--json", "--profile", "quick"]) == 0
    plan = json.loads(capsys.readouterr().out)
    loaded = load_hypothesis(own_hypothesis, "quick")
    assert (plan["hypothesis"], plan["profile"], plan["spec_sha256"]) == ("plan-test", "quick", loaded.sha256)
    arms = {arm["arm"]: arm for arm in plan["arms"]}
    assert list(arms) == ["narrow", "searched"]
    assert {arm["trials"] for arm in arms.values()} == {1}  # the profile's trials_per_arm
    assert {arm["sampler"]["name"] for arm in arms.values()} == {"random"}
    assert arms["narrow"]["fixed"] == {"r": 2} and arms["searched"]["fixed"] == {}
    assert set(arms["searched"]["params"]) == set(yaml.safe_load(OWN_SPACE)["params"])
    assert arms["narrow"]["constraints"] == ["trainable_params <= 100000"] and arms["searched"]["constraints"] == []
    assert plan["expected"] == ["narrow.test_accuracy >= searched.test_accuracy - 0.05"]


@pytest.mark.parametrize("name", ["claim_unknown_metric.yaml", "yaml_tab_indentation.yaml", "no_such_file.yaml"])
def test_a_bad_file_exits_2_with_what_validate_says_and_prints_no_plan(name, capsys):
    path = CORPUS / name
    capsys.readouterr()
    assert main(["validate", str(path)]) == 2
    said = capsys.readouterr().err
    assert said.startswith(f"{path}:")
    assert main(["plan", str(path)]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", said)


def test_an_unknown_profile_exits_2_and_names_the_profiles_there_are(capsys):
    capsys.readouterr()
    assert main(["plan", str(LORA_RANK), "--profile", "nope"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"{LORA_RANK}:") and "no profile 'nope'; this file has: default, " in line
    for profile in load_hypothesis(LORA_RANK).hypothesis.profiles:
        assert profile in line


PLAN_AND_REPORT = """\
import sys
from orchestrator.cli import main
code = main(sys.argv[1:])
print("imported:", sorted(m for m in ("ray", "mlflow") if m in sys.modules))
sys.exit(code)
"""


def test_planning_starts_nothing(tmp_path):
    """No Ray, no MLflow, no file written: a plan is safe to print anywhere."""
    result = subprocess.run(
        [sys.executable, "-c", PLAN_AND_REPORT, "plan", str(LORA_RANK)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "imported: []"
    assert list(tmp_path.iterdir()) == []


def test_a_refinement_names_the_hypothesis_it_refines(own_hypothesis, capsys):
    """``refines:`` a file: the plan names that file's hypothesis (``history`` draws the lineage)."""
    refined = own_hypothesis.parent / "refined.yaml"
    text = own_hypothesis.read_text()
    name = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("name:"))
    refined.write_text(text.replace(f"name: {name}", f"name: {name}-v2\nrefines: plan.yaml", 1))
    lines = plan_lines(capsys, str(refined))
    assert f"refines: {name}" in lines
    assert not any(line.startswith("refines:") for line in plan_lines(capsys, str(own_hypothesis)))
