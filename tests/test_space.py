"""Search-space DSL: validation and compilation to Optuna (define-by-run)."""

from __future__ import annotations

import optuna
import pytest
from pydantic import ValidationError

from orchestrator.search.space import DefineByRun, ParamSpec, SpaceFile


def space(**params) -> SpaceFile:
    return SpaceFile.model_validate({"params": params})


def sample(define: DefineByRun, seed: int = 0, n: int = 30) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        fixed = define(trial)
        out.append({**trial.params, **fixed})
        study.tell(trial, 0.0)
    return out


def test_int_float_log_step_and_categorical_compile_to_optuna():
    s = space(
        r={"type": "int", "low": 2, "high": 32, "log": True},
        lr={"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        dropout={"type": "float", "low": 0.0, "high": 0.2, "step": 0.05},
        alpha={"type": "categorical", "choices": [8, 16, 32]},
    )
    for config in sample(DefineByRun(s.params, {})):
        assert 2 <= config["r"] <= 32 and isinstance(config["r"], int)
        assert 1e-4 <= config["lr"] <= 1e-2
        assert round(config["dropout"] / 0.05, 6) == round(config["dropout"] / 0.05)
        assert config["alpha"] in (8, 16, 32)


def test_fixed_values_override_the_space_and_are_not_searched():
    s = space(r={"type": "int", "low": 2, "high": 32}, lr={"type": "float", "low": 1e-4, "high": 1e-2})
    configs = sample(DefineByRun(s.params, {"r": 8}))
    assert all(c["r"] == 8 for c in configs)
    study = optuna.create_study()
    trial = study.ask()
    DefineByRun(s.params, {"r": 8})(trial)
    assert set(trial.params) == {"lr"}


def test_conditional_parameter_only_when_its_condition_holds():
    s = space(
        kernel={"type": "categorical", "choices": ["snell", "lora"]},
        thres={"type": "float", "low": 0.0, "high": 0.9, "when": {"kernel": "snell"}},
    )
    configs = sample(DefineByRun(s.params, {}), n=40)
    assert any("thres" in c for c in configs) and any("thres" not in c for c in configs)
    for c in configs:
        assert ("thres" in c) == (c["kernel"] == "snell")


def test_conditional_on_a_list_of_values_and_declared_after_its_child():
    s = space(
        thres={"type": "float", "low": 0.0, "high": 0.9, "when": {"kernel": ["a", "b"]}},
        kernel={"type": "categorical", "choices": ["a", "b", "c"]},
    )
    for c in sample(DefineByRun(s.params, {}), n=40):
        assert ("thres" in c) == (c["kernel"] in ("a", "b"))


def test_conditions_must_name_parameters_and_must_not_cycle():
    with pytest.raises(ValidationError, match="not a parameter"):
        space(thres={"type": "float", "low": 0, "high": 1, "when": {"kernel": "x"}})
    with pytest.raises(ValidationError, match="cycle"):
        space(
            a={"type": "categorical", "choices": [1], "when": {"b": 1}},
            b={"type": "categorical", "choices": [1], "when": {"a": 1}},
        )


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"type": "int", "low": 8, "high": 2}, "greater than high"),
        ({"type": "float", "low": 0, "high": 1, "log": True}, "low > 0"),
        ({"type": "categorical", "choices": []}, "non-empty"),
        ({"type": "float", "low": 0.5, "high": 1, "log": True, "step": 0.1}, "cannot be combined"),
        ({"type": "int", "low": 1.5, "high": 3}, "integer"),
        ({"type": "categorical", "choices": [1, 2], "low": 0}, "not low/high"),
        ({"type": "float", "high": 1}, "needs 'low' and 'high'"),
        ({"type": "categorical", "choices": [{"nested": 1}]}, "plain value"),
    ],
)
def test_malformed_parameters_are_rejected(spec, message):
    with pytest.raises(ValidationError, match=message):
        ParamSpec.model_validate(spec)


def test_grid_values_for_finite_spaces():
    s = space(
        r={"type": "int", "low": 2, "high": 8, "step": 2},
        a={"type": "categorical", "choices": ["x", "y"]},
        d={"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
    )
    assert DefineByRun(s.params, {}).grid() == {"r": [2, 4, 6, 8], "a": ["x", "y"], "d": [0.0, 0.1, 0.2]}
    with pytest.raises(ValueError, match="finite"):
        DefineByRun(space(lr={"type": "float", "low": 1e-4, "high": 1e-2, "log": True}).params, {}).grid()


def test_define_by_run_space_pickles():
    """Ray pickles the searcher, space included, into every experiment checkpoint."""
    import pickle

    s = space(r={"type": "int", "low": 2, "high": 8}, t={"type": "float", "low": 0, "high": 1, "when": {"r": 4}})
    restored = pickle.loads(pickle.dumps(DefineByRun(s.params, {"x": 1})))
    assert restored.order == ["r", "t"] and restored.fixed == {"x": 1}


def test_every_shipped_space_is_valid_and_names_only_accepted_parameters():
    from pathlib import Path

    from methods import get_method
    from orchestrator.spec.checks import load_space
    from orchestrator.spec.models import TRAINING_PARAMS

    folder = Path(__file__).resolve().parent.parent / "search_spaces"
    files = sorted(folder.glob("*.yaml"))
    assert files
    for path in files:
        resolved = load_space(path)
        method = get_method(resolved.space.method or path.stem)
        accepted = set(method.Config.model_fields) | set(TRAINING_PARAMS)
        assert set(resolved.space.params) <= accepted, path.name
        method.Config(**{k: v for k, v in resolved.space.defaults.items() if k in method.Config.model_fields})
