"""``orchestrate methods``: every registered method, its hyperparameters with their
defaults, its own metrics, and the extra it needs installed.

Checked against the registry itself (``methods.available_methods``, each method's
``Config``), so adding a method needs no change here but a method missing from the
listing, or a default shown wrong, fails.
"""

from __future__ import annotations

import contextlib
import io

import pytest

import methods
from methods import available_methods, get_method
from orchestrator.cli import main


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Rich wraps table cells at the terminal's width; a wide one keeps each row on one line."""
    monkeypatch.setenv("COLUMNS", "1000")


@pytest.fixture(scope="module")
def listing() -> list[str]:
    """The output of ``orchestrate methods``, once for the module (it imports every method;
    capsys is per test, so stdout is redirected by hand)."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setenv("COLUMNS", "1000")
        assert main(["methods"]) == 0
    return out.getvalue().splitlines()


def title_of(name: str) -> str:
    cls = get_method(name)
    return f"{name}{' (routed)' if cls.routed else ''}: "


def table_rows(lines: list[str], title: str) -> list[list[str]]:
    """The cells of each row of the table titled ``title...``, up to the next title."""
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 1 :]:
        if line and not line.startswith(("│", "┏", "┃", "┡", "└", "╇", "━")):
            break
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return rows


def test_every_registered_method_is_listed(listing):
    titles = [line for line in listing if line and not line.startswith(("│", "┏", "┃", "┡", "└"))]
    for name in available_methods():
        assert any(line.startswith(title_of(name)) for line in titles), f"{name} is not listed"


@pytest.mark.parametrize("name", available_methods())
def test_each_hyperparameter_is_shown_with_its_default(name, listing):
    cls = get_method(name)
    rows = {row[0]: row for row in table_rows(listing, title_of(name))}
    assert list(rows) == list(cls.Config.model_fields)
    for field_name, field in cls.Config.model_fields.items():
        assert rows[field_name][1] == repr(field.get_default(call_default_factory=True)), field_name
        assert rows[field_name][2] == (field.description or "")


def test_routed_methods_are_marked(listing):
    routed = [name for name in available_methods() if get_method(name).routed]
    assert routed, "no routed method registered: the mark is untested"
    for name in routed:
        assert any(line.startswith(f"{name} (routed): ") for line in listing)


def test_a_methods_own_metrics_are_listed(listing):
    with_metrics = [name for name in available_methods() if get_method(name).metrics]
    assert with_metrics
    for name in with_metrics:
        rows = table_rows(listing, f"{name}: its own metrics")
        assert [row[0] for row in rows] == list(get_method(name).metrics)


def test_a_method_that_needs_an_extra_names_its_install_command(listing):
    needing = {name: get_method(name).requires for name in available_methods() if get_method(name).requires}
    assert "qlora_adalora" in needing  # bitsandbytes, the [quant] extra
    for name, requires in needing.items():
        needs = ", ".join(f"{r.module} ({r.install_command})" for r in requires)
        assert f"{name} needs: {needs}" in listing
    assert "qlora_adalora needs: bitsandbytes (pip install 'hypothesis-orchestrator[quant]')" in listing


def test_a_method_that_cannot_load_is_reported_and_the_others_still_listed(monkeypatch, capsys):
    real = methods.get_method
    broken = "lora"

    def get_method_but_one_broken(name):
        if name == broken:
            raise ImportError("No module named 'peft'")
        return real(name)

    monkeypatch.setattr(methods, "get_method", get_method_but_one_broken)
    capsys.readouterr()
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"{broken}: unavailable (No module named 'peft')" in lines
    others = [name for name in available_methods() if name != broken]
    for name in others:
        assert any(line.startswith(title_of(name)) for line in lines), f"{name} hidden by the broken {broken}"
