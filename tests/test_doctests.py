"""The examples in the judge's docstrings run as written (they are its quickest documentation)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "orchestrator.judge",
    "orchestrator.judge.verdicts",
    "orchestrator.judge.stats",
    "orchestrator.judge.evidence",
    "orchestrator.judge.sequential",
    "orchestrator.trial.per_example",
    "orchestrator.execute.looks",
    "orchestrator.search.botorch_sampler",
    "orchestrator.finite",
    "orchestrator.tasks.types.causal_lm",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
