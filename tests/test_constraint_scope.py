"""Which arms a search constraint binds (``search.constraints`` -> each arm's plan).

``"flops_ratio <= 0.45"`` binds the routed arms only: the budget is what routing promises,
and a plain LoRA baseline must never be marked infeasible by it. ``"all: ..."`` binds
every arm; ``"ARM: ..."`` the arm named and no other. A scope that names no arm is a
spec error, reported at its line: those cases are files of the bad-input corpus
(``tests/bad_inputs/constraint_unknown_scope.yaml``, ``constraint_scoped_to_a_method.yaml``).
Checked through the plan made from a loaded spec, as ``orchestrate plan`` and ``run`` see it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.plan import make_plan
from orchestrator.spec.loader import load_hypothesis

HYPOTHESIS = """\
name: scope-test
statement: a routed arm and two plain ones
task: {{model: random:bert-tiny, dataset: synthetic:polarity, max_length: 32}}
arms:
  routed: {{method: cogalora, fixed: {{r: 8}}}}
  small: {{method: lora, fixed: {{r: 2}}}}
  large: {{method: lora, fixed: {{r: 8}}}}
search:
  sampler: tpe
  trials_per_arm: 2
  constraints: {constraints}
"""


@pytest.fixture
def constraints_by_arm(tmp_path: Path):
    """``{arm: [constraint as text]}`` of the plan of HYPOTHESIS with these constraints."""

    def plan(constraints: list[str]) -> dict[str, list[str]]:
        path = tmp_path / "scope.yaml"
        path.write_text(HYPOTHESIS.format(constraints=json.dumps(constraints)))
        return {arm.arm: [str(c) for c in arm.constraints] for arm in make_plan(load_hypothesis(path)).arms}

    return plan


def test_the_routed_arm_is_routed_and_the_others_are_not(tmp_path):
    path = tmp_path / "scope.yaml"
    path.write_text(HYPOTHESIS.format(constraints="[]"))
    routed = {arm.arm: arm.routed for arm in make_plan(load_hypothesis(path)).arms}
    assert routed == {"routed": True, "small": False, "large": False}


def test_an_unscoped_constraint_binds_the_routed_arms_only(constraints_by_arm):
    assert constraints_by_arm(["flops_ratio <= 0.45"]) == {"routed": ["flops_ratio <= 0.45"], "small": [], "large": []}


def test_a_constraint_scoped_to_an_arm_binds_that_arm_only(constraints_by_arm):
    by_arm = constraints_by_arm(["small: trainable_params <= 5000"])
    assert by_arm == {"routed": [], "small": ["trainable_params <= 5000"], "large": []}


def test_a_constraint_scoped_to_a_plain_arm_does_not_bind_the_routed_one(constraints_by_arm):
    assert constraints_by_arm(["large: flops_ratio < 0.9"])["routed"] == []


def test_all_binds_every_arm(constraints_by_arm):
    by_arm = constraints_by_arm(["all: flops_ratio <= 0.5"])
    assert by_arm == {arm: ["flops_ratio <= 0.5"] for arm in ("routed", "small", "large")}


def test_several_constraints_each_bind_their_own_scope_in_the_spec_order(constraints_by_arm):
    by_arm = constraints_by_arm(["all: val_loss <= 2", "flops_ratio <= 0.45", "small: trainable_params <= 5000"])
    assert by_arm == {
        "routed": ["val_loss <= 2", "flops_ratio <= 0.45"],
        "small": ["val_loss <= 2", "trainable_params <= 5000"],
        "large": ["val_loss <= 2"],
    }


def test_spaces_around_the_scope_do_not_change_it(constraints_by_arm):
    by_arm = constraints_by_arm(["  small :  trainable_params <= 5000"])
    assert (by_arm["small"], by_arm["large"]) == (["trainable_params <= 5000"], [])
