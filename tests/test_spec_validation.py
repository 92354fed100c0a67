"""Bad input: every error class gets FILE:LINE: field: message, exit 2, nothing started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.spec.errors import SpecError
from orchestrator.spec.loader import load_hypothesis

from conftest import TINY_HYPOTHESIS


def issues_of(path: Path, profile: str | None = None) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_hypothesis(path, profile)
    return [str(i) for i in info.value.issues]


def replaced(old: str, new: str) -> str:
    assert old in TINY_HYPOTHESIS, old
    return TINY_HYPOTHESIS.replace(old, new)


def test_valid_file_loads(tiny_hypothesis):
    loaded = load_hypothesis(tiny_hypothesis)
    assert loaded.hypothesis.name == "tiny-test"
    assert list(loaded.hypothesis.arms) == ["small", "large"]
    assert len(loaded.sha256) == 64


def test_yaml_syntax_error_has_its_line(write_yaml):
    path = write_yaml(replaced("  max_length: 32\n", "  max_length: [32\n"))
    (issue,) = issues_of(path)
    assert issue.startswith(f"{path}:7:")
    assert "YAML syntax error" in issue


def test_unknown_key_is_an_error_with_a_suggestion(write_yaml):
    path = write_yaml(replaced("  trials_per_arm: 2", "  trails_per_arm: 2"))
    (issue,) = issues_of(path)
    assert issue == f"{path}:17: search.trails_per_arm: unknown key; did you mean 'trials_per_arm'?"


def test_wrong_type(write_yaml):
    path = write_yaml(replaced("training: {epochs: 1,", "training: {epochs: many,"))
    (issue,) = issues_of(path)
    assert issue.startswith(f"{path}:13: training.epochs: ")
    assert "integer" in issue


def test_out_of_range_value(write_yaml):
    path = write_yaml(replaced("confirm: {seeds: 2,", "confirm: {seeds: 0,"))
    (issue,) = issues_of(path)
    assert issue.startswith(f"{path}:20: confirm.seeds: ")
    assert "greater than or equal to 1" in issue


def test_unknown_method_suggests_nearest_names(write_yaml):
    path = write_yaml(replaced("small: {method: lora,", "small: {method: lorra,"))
    (issue,) = issues_of(path)
    assert issue.startswith(f"{path}:11: arms.small.method: unknown method 'lorra'; did you mean")
    assert "'lora'" not in issue and "lora" in issue


def test_fixed_hyperparameter_the_method_does_not_accept(write_yaml):
    path = write_yaml(replaced("fixed: {r: 2}", "fixed: {rank: 2}"))
    (issue,) = issues_of(path)
    assert issue.startswith(f"{path}:11: arms.small.fixed.rank: method 'lora' has no hyperparameter 'rank'")


def test_fixed_value_out_of_the_methods_range(write_yaml):
    path = write_yaml(replaced("fixed: {r: 2}", "fixed: {r: 0}"))
    (issue,) = issues_of(path)
    assert issue.startswith(f"{path}:11: arms.small.fixed.r: ")


def test_space_parameter_the_method_does_not_accept(write_yaml):
    space = write_yaml("method: lora\nparams:\n  r: {type: int, low: 2, high: 8}\n  kernel_size: {type: int, low: 1, high: 3}\n", "space.yaml")
    path = write_yaml(replaced("small: {method: lora,", "small: {method: lora, space: space.yaml,"))
    (issue,) = issues_of(path)
    assert issue.startswith(f"{space}:4: params.kernel_size: method 'lora' has no hyperparameter 'kernel_size'")


def test_malformed_space_file(write_yaml):
    space = write_yaml("params:\n  r: {type: int, low: 8, high: 2}\n", "space.yaml")
    path = write_yaml(replaced("small: {method: lora,", "small: {method: lora, space: space.yaml,"))
    (issue,) = issues_of(path)
    assert issue.startswith(f"{space}:2: params.r: low (8.0) is greater than high (2.0)")


def test_missing_space_file(write_yaml):
    path = write_yaml(replaced("small: {method: lora,", "small: {method: lora, space: nowhere.yaml,"))
    (issue,) = issues_of(path)
    assert issue.startswith(f"{path}:11: arms.small.space: search space 'nowhere.yaml' not found")


def test_claim_naming_an_unknown_arm(write_yaml):
    path = write_yaml(replaced("  - small.flops_ratio <= large.flops_ratio / 2", "  - smal.flops_ratio <= large.flops_ratio / 2"))
    (issue,) = issues_of(path)
    assert issue.startswith(f"{path}:22: expected.0: claim names unknown arm 'smal'; did you mean 'small'?")


def test_claim_naming_an_unknown_metric(write_yaml):
    path = write_yaml(replaced("small.test_accuracy >= large", "small.test_acuracy >= large"))
    (issue,) = issues_of(path)
    assert issue.startswith(f"{path}:23: expected.1: arm 'small': unknown metric 'test_acuracy'; did you mean 'test_accuracy'")


def test_claim_syntax_error_gives_the_column(write_yaml):
    path = write_yaml(replaced("small.test_accuracy >= large", "small.test_accuracy >>= large"))
    (issue,) = issues_of(path)
    assert issue.startswith(f"{path}:23: expected.1: ")
    assert "column" in issue


def test_profile_overriding_an_unknown_key(write_yaml):
    path = write_yaml(TINY_HYPOTHESIS + "profiles:\n  fast:\n    training: {epoch: 1}\n")
    (issue,) = issues_of(path)
    assert issue == f"{path}:26: training.epoch: unknown key; did you mean 'epochs'?"


def test_unknown_profile_requested(tiny_hypothesis):
    (issue,) = issues_of(tiny_hypothesis, "nope")
    assert "no profile 'nope'" in issue


def test_duplicate_key(write_yaml):
    path = write_yaml(replaced("  max_length: 32\n", "  max_length: 32\n  max_length: 64\n"))
    (issue,) = issues_of(path)
    assert issue == f"{path}:7: task.max_length: duplicate key"


def test_missing_required_field(write_yaml):
    path = write_yaml(replaced("statement: a tiny hypothesis for tests\n", ""))
    (issue,) = issues_of(path)
    assert issue == f"{path}:1: statement: required field is missing"


def test_bad_constraint(write_yaml):
    path = write_yaml(replaced("  scheduler: fifo", "  scheduler: fifo\n  constraints: ['flops_ratio is small']"))
    (issue,) = issues_of(path)
    assert issue.startswith(f"{path}:20: search.constraints.0: ")


def test_objective_on_the_held_out_split_is_refused(write_yaml):
    path = write_yaml(replaced("objectives: {val_accuracy: max}", "objectives: {test_accuracy: max}"))
    (issue,) = issues_of(path)
    assert "must not select on the held-out split" in issue


def test_python_tags_are_refused(write_yaml):
    path = write_yaml(replaced("name: tiny-test", "name: !!python/object/apply:os.system ['echo pwned']"))
    (issue,) = issues_of(path)
    assert issue.startswith(f"{path}:1: name: cannot read value")


def test_every_problem_is_reported_at_once(write_yaml):
    text = replaced("trials_per_arm: 2", "trials_per_arm: -1").replace("small: {method: lora,", "small: {method: lorra,")
    path = write_yaml(text)
    with pytest.raises(SpecError) as info:
        load_hypothesis(path)
    assert len(info.value.issues) >= 1  # pydantic errors stop before cross checks...
    fields = {i.field for i in info.value.issues}
    assert "search.trials_per_arm" in fields


def test_cli_validate_exits_2_without_traceback_and_starts_nothing(write_yaml, tmp_path, capsys, monkeypatch):
    import orchestrator.execute.ray_session

    def no_ray(*args, **kwargs):
        raise AssertionError("bad input reached Ray")

    # the session's shared Ray may be up already (conftest.shared_ray): then "not initialised" proves nothing
    ray_was_up = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    monkeypatch.setattr(orchestrator.execute.ray_session, "ray_session", no_ray)
    monkeypatch.chdir(tmp_path)
    path = write_yaml(replaced("  trials_per_arm: 2", "  trails_per_arm: 2"))
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert f"{path}:17: search.trails_per_arm" in captured.err
    assert "Traceback" not in captured.err
    assert main(["run", str(path), "--quiet"]) == 2
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / ".orchestrate").exists()
    assert ray_was_up or "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_cli_validate_ok(tiny_hypothesis, capsys):
    assert main(["validate", str(tiny_hypothesis)]) == 0
    assert "ok" in capsys.readouterr().out


def test_console_script_exit_code(write_yaml):
    path = write_yaml("name: x\n  bad: [\n")
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "validate", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}:")
    assert "Traceback" not in result.stderr


def test_a_confirmation_on_the_split_the_search_selects_on_is_refused_at_its_line(write_yaml):
    """Selection on validation, judgement on held-out data: confirm.split validation
    would report the search's optimism as a finding (issue 14, split hygiene)."""
    text = TINY_HYPOTHESIS.replace("confirm: {seeds: 2, split: test}", "confirm: {seeds: 2, split: validation}")
    assert text != TINY_HYPOTHESIS
    path = write_yaml(text)
    (issue,) = issues_of(path)
    line = 1 + text.splitlines().index(next(l for l in text.splitlines() if l.startswith("confirm:")))
    assert issue.startswith(f"{path}:{line}: confirm.split: the search selects on the validation split")


@pytest.mark.parametrize("name", ["plateau", "snell"])
def test_the_shipped_paper_profiles_judge_on_the_held_out_split(name):
    path = Path(__file__).resolve().parent.parent / "hypotheses" / f"{name}.yaml"
    assert load_hypothesis(path, "paper").hypothesis.confirm.split == "test"
