"""Command-line input that used to end in a traceback or a misleading message: each case
is one line on stderr, naming what is wrong, and exit 2 before anything started.

Each case is the command, the exit code and a fragment of the message, side by side
(``CASES``); a case builds what it needs in a fresh folder (``Where``). Before: ``ui --port
99999`` raised OverflowError; ``ui`` on a damaged store started a server that answered
with tracebacks, then said it "did not answer within 20 s"; ``.nan`` in a float field read
"should be <= 1"; a second ``run`` of a hypothesis in one folder ran every trial again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import TINY_HYPOTHESIS, new_mlflow_store
from orchestrator.cli import main

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Where:
    """The case's folder, and processes to stop after it."""

    folder: Path
    holders: list[subprocess.Popen]

    def spec(self, text: str = TINY_HYPOTHESIS) -> str:
        (self.folder / "tiny.yaml").write_text(text)
        return str(self.folder / "tiny.yaml")

    def damaged_store(self) -> str:
        """A real store whose sqlite header is overwritten (as a bad copy or disk would)."""
        uri = new_mlflow_store(self.folder)
        with open(self.folder / "mlflow.db", "r+b") as db:
            db.write(b"this is no longer an sqlite file")
        return uri

    def lock_held(self, state_dir: Path, hypothesis: str = "tiny-test", profile: str = "default") -> None:
        """Another process holds the run lock of (hypothesis, profile) in ``state_dir``."""
        code = textwrap.dedent("""\
            import sys
            from pathlib import Path
            from orchestrator.execute.run_lock import hold_run_lock
            with hold_run_lock(Path(sys.argv[1]), sys.argv[2], sys.argv[3]):
                print("held", flush=True)
                sys.stdin.read()
        """)
        holder = subprocess.Popen(
            [sys.executable, "-c", code, str(state_dir), hypothesis, profile],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.holders.append(holder)
        assert holder.stdout.readline().strip() == "held"


def run_while_locked(where: Where) -> list[str]:
    where.lock_held(where.folder / "state")
    return [
        "run",
        where.spec(),
        "--state-dir",
        str(where.folder / "state"),
        "--tracking-uri",
        f"sqlite:///{where.folder}/new.db",
    ]


def non_finite(value: str) -> Callable[[Where], list[str]]:
    def argv(where: Where) -> list[str]:
        return ["validate", where.spec(TINY_HYPOTHESIS.replace("lr: 1.0e-2}", f"lr: {value}}}"))]

    return argv


@dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[Where], list[str]]
    exit_code: int
    message: str


CASES = [
    Case(
        "ui port above 65535",
        lambda w: ["ui", "--port", "99999", "--tracking-uri", new_mlflow_store(w.folder)],
        2,
        "orchestrate ui: --port 99999 is not a port: pass 1-65535, or 0 for any free one",
    ),
    Case(
        "ui negative port",
        lambda w: ["ui", "--port", "-1", "--tracking-uri", new_mlflow_store(w.folder)],
        2,
        "orchestrate ui: --port -1 is not a port",
    ),
    Case(
        "ui on a damaged store", lambda w: ["ui", "--port", "0", "--tracking-uri", w.damaged_store()], 2, "mlflow.db"
    ),
    Case(
        "ui on a damaged store, with a hypothesis",
        lambda w: ["ui", "--port", "0", "--hypothesis", "tiny-test", "--tracking-uri", w.damaged_store()],
        2,
        "mlflow.db",
    ),
    Case("NaN learning rate", non_finite(".nan"), 2, "tiny.yaml:13: training.lr: Input should be a finite number"),
    Case(
        "infinite learning rate", non_finite(".inf"), 2, "tiny.yaml:13: training.lr: Input should be a finite number"
    ),
    Case(
        "NaN confidence",
        lambda w: ["validate", w.spec(TINY_HYPOTHESIS + "judge: {confidence: .nan}\n")],
        2,
        "tiny.yaml:24: judge.confidence: Input should be a finite number",
    ),
    Case(
        "a second run of the same hypothesis in one state folder",
        run_while_locked,
        2,
        "orchestrate: hypothesis 'tiny-test' (profile 'default') is already running in this state folder (pid ",
    ),
    Case(
        "state folder is a file",
        lambda w: ["run", w.spec(), "--state-dir", w.spec(), "--tracking-uri", f"sqlite:///{w.folder}/new.db"],
        2,
        "is not a folder",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_command_line_input_is_one_line_and_exit_2(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    where = Where(tmp_path, [])
    try:
        argv = case.argv(where)
        capsys.readouterr()
        code = main(argv)
    finally:
        for holder in where.holders:
            holder.kill()
            holder.wait()
    captured = capsys.readouterr()
    assert code == case.exit_code, captured.err
    assert case.message in captured.err, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "did not answer" not in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "new.db").exists()  # a refused run touched no MLflow store
