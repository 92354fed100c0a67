"""The scale benchmark's quick mode (benchmarks/scale.py, docs/scale.md) runs from the
repository as CI would run it and prints its table: a row per case, growth fits, and
the JSON it was asked for. Nothing here is timed: the numbers are the benchmark's to
report, not this test's to judge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
QUICK_TIMEOUT_S = 1200  # a ceiling against a hang on a loaded machine, not a measurement


def test_quick_mode_prints_its_table_and_fits(tmp_path: Path) -> None:
    """Also on a machine where Ray never ran: Ray's default temp folder (RAY_TMPDIR here)
    does not exist yet, which is what a fresh CI machine or laptop has."""
    out = tmp_path / "scale.json"
    never_ran = tmp_path / "no-ray-yet"
    done = subprocess.run(
        [sys.executable, "benchmarks/scale.py", "--quick", "--json", str(out)],
        cwd=ROOT,
        env={**os.environ, "RAY_TMPDIR": str(never_ran)},
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("| sampler | conc. | trials |"), done.stdout[:2000]
    rows = [line.split("|")[1:4] for line in lines if line.startswith("| tpe |")]
    assert [[cell.strip() for cell in row] for row in rows[:2]] == [["tpe", "2", "40"], ["tpe", "8", "40"]]
    assert "falls behind at n =" in done.stdout
    saved = json.loads(out.read_text())
    assert [(r["concurrency"], r["trials"]) for r in saved["rows"]] == [(2, 40), (8, 40)]
    assert set(saved["fits"]["tpe"]) == {"suggest", "tell", "mlflow write", "state save"}
