"""Search spaces: the YAML DSL, its validation, and its compilation to Optuna.

A space file lists a method's searchable hyperparameters::

    method: lora
    params:
      r: {type: int, low: 2, high: 32, log: true}
      lora_alpha: {type: categorical, choices: [8, 16, 32]}
      lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      init_thres: {type: float, low: 0.0, high: 0.9, when: {kernel: snell}}
    defaults: {r: 8, lora_alpha: 16, lr: 5.0e-4}

``when`` makes a parameter conditional on other parameters' values, so the space is
compiled *define-by-run* (an Optuna trial asks for parameters in dependency order).
An arm's ``fixed`` values override the space: a fixed parameter is not searched.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

if TYPE_CHECKING:
    import optuna


class ParamSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = None
    when: dict[str, Any] | None = Field(None, description="sample only when these parameters take these values")

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.log or self.step:
                raise ValueError("a categorical parameter takes 'choices', not low/high/log/step")
            for choice in self.choices:
                if not isinstance(choice, (str, int, float, bool)) and choice is not None:
                    raise ValueError(f"choice {choice!r} is not a plain value (str, number, bool, null)")
            return self
        if self.choices is not None:
            raise ValueError(f"an {self.type} parameter takes low/high, not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"an {self.type} parameter needs 'low' and 'high'")
        # .inf / .nan: int(inf) raised OverflowError through pydantic, and nan passed every check
        if not all(math.isfinite(x) for x in (self.low, self.high, self.step or 0.0)):
            raise ValueError("low, high and step must be finite numbers (not .inf or .nan)")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scaled parameter needs low > 0")
        if self.log and self.step:
            raise ValueError("'log' and 'step' cannot be combined")
        if self.type == "int" and (float(self.low) != int(self.low) or float(self.high) != int(self.high)):
            raise ValueError("an int parameter needs integer low and high")
        if self.type == "int" and self.step is not None and float(self.step) != int(self.step):
            raise ValueError("an int parameter needs an integer step")  # int(0.5) == 0 broke suggest_int
        return self

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution ``suggest`` samples from (what a study rebuilt from
        logged trials needs, e.g. the report's importances)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type == "categorical":
            return CategoricalDistribution(self.choices or [])
        low, high = self.bounds
        if self.type == "int":
            return IntDistribution(int(low), int(high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(low, high, log=self.log, step=self.step)

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high) of an int or float parameter (``_check`` makes sure both are set)."""
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter has no low/high")
        return self.low, self.high

    def grid_values(self) -> list[Any] | None:
        """Every value, when the parameter is finite (for the grid sampler)."""
        if self.type == "categorical":
            return list(self.choices or [])
        low, high = self.bounds
        if self.type == "int" and not self.log:
            values = range(int(low), int(high) + 1, int(self.step or 1))
            _check_grid_size(len(values))
            return list(values)
        if self.step:
            count = round((high - low) / self.step) + 1
            _check_grid_size(count)
            return [round(low + i * self.step, 12) for i in range(count)]
        return None


MAX_GRID = 100_000


def _check_grid_size(count: int) -> None:
    """A grid is materialised (Optuna's GridSampler lists every point): keep it sane."""
    if count > MAX_GRID:
        raise ValueError(f"a grid of {count} points is too large for the grid sampler (at most {MAX_GRID})")


class SpaceFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str | None = None
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="the paper's default configuration, tried first"
    )

    @model_validator(mode="after")
    def _conditions_name_params(self) -> SpaceFile:
        for name, spec in self.params.items():
            for parent in spec.when or {}:
                if parent == name:
                    raise _located(("params", name, "when", parent), f"params.{name}.when refers to itself")
                if parent not in self.params:
                    raise _located(
                        ("params", name, "when", parent),
                        f"params.{name}.when names {parent!r}, which is not a parameter of this space",
                    )
        try:
            _dependency_order(self.params)  # raises on cycles
        except _CycleError as exc:
            raise _located(("params", exc.chain[-2], "when"), str(exc)) from None
        for name in self.defaults:
            if name not in self.params:
                raise _located(("defaults", name), f"defaults.{name}: not a parameter of this space")
        return self


def _located(loc: tuple[Any, ...], message: str) -> ValidationError:
    """A ValidationError at ``loc`` (a plain ValueError from a model validator has an
    empty location, which ``orchestrate validate`` could only report at line 1)."""
    error = PydanticCustomError("space", "{message}", {"message": message})
    return ValidationError.from_exception_data("SpaceFile", [InitErrorDetails(type=error, loc=loc, input=None)])


class _CycleError(ValueError):
    def __init__(self, chain: tuple[str, ...]) -> None:
        super().__init__(f"conditional parameters form a cycle: {' -> '.join(chain)}")
        self.chain = chain


def _dependency_order(params: dict[str, ParamSpec]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise _CycleError(chain + (name,))
        state[name] = 1
        for parent in params[name].when or {}:
            if parent in params:  # a parent held fixed by the arm is known from the start
                visit(parent, chain + (name,))
        state[name] = 2
        order.append(name)

    for name in params:
        visit(name, ())
    return order


def condition_holds(condition: dict[str, Any] | None, chosen: dict[str, Any]) -> bool:
    """Whether every parent named in a ``when`` condition has been chosen with one of
    the wanted values (a value or a list of them); no condition always holds."""
    for parent, wanted in (condition or {}).items():
        if parent not in chosen:
            return False
        options = wanted if isinstance(wanted, list) else [wanted]
        if chosen[parent] not in options:
            return False
    return True


class DefineByRun:
    """Optuna define-by-run space for one arm: ``fn(trial) -> fixed values``.

    A class, not a closure: Ray pickles the searcher (and this space) into every
    experiment checkpoint, and lambdas do not pickle.
    """

    def __init__(self, params: dict[str, ParamSpec], fixed: dict[str, Any]) -> None:
        self.params = {k: v for k, v in params.items() if k not in fixed}
        self.fixed = dict(fixed)
        self.order = _dependency_order(self.params)

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        chosen: dict[str, Any] = dict(self.fixed)
        for name in self.order:
            spec = self.params[name]
            if not condition_holds(spec.when, chosen):
                continue
            chosen[name] = suggest(trial, name, spec)
        return dict(self.fixed)  # OptunaSearch merges these constants into the config

    def searched(self) -> dict[str, ParamSpec]:
        """Parameters a trial can sample: a condition on a fixed value that fails
        removes its parameter from the search altogether."""
        return {
            k: v
            for k, v in self.params.items()
            if all(p not in self.fixed or condition_holds({p: w}, self.fixed) for p, w in (v.when or {}).items())
        }

    def active(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """The hyperparameters a trial actually uses: sampled plus fixed."""
        return {**sampled, **self.fixed}

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's space; only for unconditional, finite spaces."""
        grid = {}
        for name, spec in self.params.items():
            values = spec.grid_values()
            if values is None or spec.when:
                raise ValueError(f"the grid sampler needs finite, unconditional parameters; {name!r} is not")
            grid[name] = values
        _check_grid_size(math.prod(len(v) for v in grid.values()))
        return grid


def suggest(trial: optuna.Trial, name: str, spec: ParamSpec) -> Any:
    if spec.type == "categorical":
        return trial.suggest_categorical(name, spec.choices or [])
    low, high = spec.bounds
    if spec.type == "int":
        return trial.suggest_int(name, int(low), int(high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(name, low, high, step=spec.step, log=spec.log)
