"""A corpus of malformed hypothesis and search-space files (tests/bad_inputs/).

Every file states what must be reported in its first lines::

    # expect: LINE FIELD MESSAGE-FRAGMENT

one line per expected issue (FIELD ``-`` when the issue has no field, LINE ``-`` when it
has no line). The issues reported must be exactly these: same number, same line, same
field, the fragment in the message. Each file also goes through the command line:
``orchestrate validate`` exits 2 and prints ``FILE:LINE: field: message`` lines, no
traceback. Files in ``bad_inputs/spaces/`` are search spaces; each is checked through a
small hypothesis whose arm names it (``_*.yaml`` there are helpers, not cases).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.spec.errors import SpecError, SpecIssue
from orchestrator.spec.loader import load_hypothesis
from orchestrator.spec.yaml_lines import MAX_FILE_BYTES

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "bad_inputs"
HYPOTHESES = sorted(CORPUS.glob("*.yaml"))
SPACES = sorted(p for p in (CORPUS / "spaces").glob("*.yaml") if not p.name.startswith("_"))

SPACE_PROBE = """\
name: space-probe
statement: an arm whose search space is malformed
task: {{model: random:bert-tiny, dataset: synthetic:polarity, max_length: 32}}
arms:
  probe: {{method: lora, space: {space}}}
search: {{trials_per_arm: 2}}
"""


@dataclass(frozen=True)
class Expect:
    line: int | None
    field: str
    message: str

    def matches(self, issue: SpecIssue) -> bool:
        return issue.line == self.line and issue.field == self.field and self.message in issue.message

    def __str__(self) -> str:
        return f"{self.line}: {self.field}: ...{self.message}..."


def expectations(path: Path) -> list[Expect]:
    out = []
    # the header is ASCII; the rest may be deliberately broken bytes
    for raw in path.read_bytes().decode("latin-1").splitlines():
        if not raw.startswith("# expect: "):
            break
        line, field, message = raw[len("# expect: ") :].split(" ", 2)
        out.append(Expect(None if line == "-" else int(line), "" if field == "-" else field, message))
    assert out, f"{path.name} states no expectation"
    return out


def assert_issues_match(issues: list[SpecIssue], expected: list[Expect], file: str) -> list[SpecIssue]:
    """Every issue expected, every expectation met, in ``file``; returns the issues."""
    shown = "\n".join(map(str, issues))
    assert len(issues) == len(expected), f"expected {len(expected)} issue(s), got:\n{shown}"
    remaining = list(expected)
    for issue in issues:
        assert issue.file == file, shown
        assert "\n" not in issue.message, f"a message must be one line: {issue}"
        match = next((e for e in remaining if e.matches(issue)), None)
        assert match is not None, f"unexpected issue {issue}\nexpected: {', '.join(map(str, remaining))}"
        remaining.remove(match)
    return issues


def issues_of(path: Path) -> list[SpecIssue]:
    with pytest.raises(SpecError) as info:
        load_hypothesis(path)
    return info.value.issues


def assert_cli_reports(path: Path, issues: list[SpecIssue], capsys) -> None:
    capsys.readouterr()
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "ok" not in captured.out
    assert captured.err.splitlines() == [str(i) for i in issues]
    for line, issue in zip(captured.err.splitlines(), issues, strict=True):
        where = f"{issue.file}:{issue.line}: " if issue.line else f"{issue.file}: "
        assert line.startswith(where + (f"{issue.field}: " if issue.field else "")), line


def test_the_corpus_is_large_and_covers_both_kinds():
    assert len(HYPOTHESES) + len(SPACES) >= 40
    assert len(SPACES) >= 15


@pytest.mark.parametrize("path", HYPOTHESES, ids=lambda p: p.stem)
def test_malformed_hypothesis(path: Path, capsys):
    issues = assert_issues_match(issues_of(path), expectations(path), str(path))
    assert_cli_reports(path, issues, capsys)


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_malformed_search_space(path: Path, tmp_path: Path, capsys):
    hypothesis = tmp_path / "probe.yaml"
    hypothesis.write_text(SPACE_PROBE.format(space=json.dumps(str(path))))
    issues = assert_issues_match(issues_of(hypothesis), expectations(path), str(path))
    assert_cli_reports(hypothesis, issues, capsys)


# -- cases that are generated rather than stored ---------------------------------------


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("zero_bytes.yaml", b"", Expect(1, "", "the file is empty")),
        (
            "huge.yaml",
            b"# padding\n" * (MAX_FILE_BYTES // 10 + 1),
            Expect(1, "", f"larger than {MAX_FILE_BYTES >> 20} MiB"),
        ),
        ("utf16.yaml", "name: x\n".encode("utf-16"), Expect(1, "", "not UTF-8 text (byte 0xff)")),
        ("nul_byte.yaml", b"name: x\nstatement: a\x00b\n", Expect(2, "", "character #x0000 is not allowed")),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_generated_bad_files(name, content, expected, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(content)
    issues = assert_issues_match(issues_of(path), [expected], str(path))
    assert_cli_reports(path, issues, capsys)


def test_missing_file_and_folder(tmp_path, capsys):
    missing = tmp_path / "nowhere.yaml"
    assert_issues_match(issues_of(missing), [Expect(None, "", "no such file")], str(missing))
    assert_issues_match(issues_of(tmp_path), [Expect(None, "", "not a regular file")], str(tmp_path))
    assert main(["validate", str(missing), str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{missing}: no such file", f"{tmp_path}: cannot read: not a regular file"]


def test_unreadable_file(tmp_path, capsys):
    path = tmp_path / "secret.yaml"
    path.write_text("name: x\n")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: permissions are not enforced")
        assert_issues_match(issues_of(path), [Expect(None, "", "cannot read: Permission denied")], str(path))
    finally:
        path.chmod(0o600)


# -- through a real process -------------------------------------------------------------

SAMPLE = [
    "yaml_tab_indentation",
    "unknown_key_search",
    "claim_syntax_column",
    "python_tag_apply",
    "not_utf8",
    "alias_bomb",
]


def test_console_validate_in_a_subprocess():
    paths = [CORPUS / f"{name}.yaml" for name in SAMPLE]
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "validate", *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    expected = [e for p in paths for e in expectations(p)]
    assert len(lines) == len(expected), result.stderr
    for path in paths:
        for e in expectations(path):
            prefix = f"{path}:{e.line}: " + (f"{e.field}: " if e.field else "")
            assert any(line.startswith(prefix) and e.message in line for line in lines), (
                prefix,
                e.message,
                result.stderr,
            )


RUN_AND_REPORT = """\
import sys
from orchestrator.cli import main
code = main(sys.argv[1:])
print("ray imported:", "ray" in sys.modules)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    """``orchestrate run BAD`` in a fresh process and an empty working folder."""
    cwd = tmp_path_factory.mktemp("bad_run")
    path = CORPUS / "claim_unknown_metric.yaml"
    result = subprocess.run(
        [sys.executable, "-c", RUN_AND_REPORT, "run", str(path), "--quiet"],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return path, cwd, result


def test_run_on_bad_input_exits_2_and_creates_nothing(bad_run):
    path, cwd, result = bad_run
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{path}:22: expected.1: arm 'small': unknown metric 'test_acuracy'")
    assert sorted(p.name for p in cwd.iterdir()) == []  # no mlflow.db, no .orchestrate/
    assert "ray imported:" in result.stdout


def test_run_on_bad_input_does_not_even_import_ray(bad_run):
    _, _, result = bad_run
    assert "ray imported: False" in result.stdout
