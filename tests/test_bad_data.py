"""A corpus of bad user data files (tests/bad_data/), refused before anything starts.

Every ``NAME.csv`` / ``NAME.jsonl`` there has a sidecar ``NAME.csv.expect``::

    # what is wrong with the file (one line)
    task: {train_examples: 8}                 (optional: keys added to the probe's task)
    expect: WHERE LINE FIELD MESSAGE-FRAGMENT

one ``expect:`` line per issue. WHERE is ``data`` (a line of the data file, FIELD its
column) or ``hypothesis`` (a line of the probe hypothesis below, FIELD e.g.
``task.dataset``); FIELD ``-`` when there is none. The issues reported must be exactly
these, and every case exits 2 (``orchestrate validate``: one line per issue, no
traceback). The probe names the file on line 5 (``task.dataset``); the ``task:`` keys
follow from line 7, one per line, in their order.

Cases a git checkout cannot hold (a folder, a symbolic link loop, a FIFO, a missing or
unreadable file, a 5 MB field, a file over the size limit) are made by ``GENERATED``
below. Files in ``bad_data/good/`` must keep loading; their sidecar gives the label
names in order and the number of rows.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.errors import DataFileError
from orchestrator.spec.errors import SpecError, SpecIssue
from orchestrator.spec.loader import load_hypothesis
from orchestrator.tasks import data_checks, data_files
from orchestrator.tasks.datasets import load_dataset

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "bad_data"
BAD = sorted(p for p in CORPUS.iterdir() if p.suffix in (".csv", ".jsonl"))
GOOD = sorted(p for p in (CORPUS / "good").iterdir() if p.suffix in (".csv", ".jsonl"))

PROBE = """\
name: bad-data-probe
statement: a hypothesis that reads one data file
task:
  model: random:bert-tiny
  dataset: {dataset}
  max_length: 32
{task}arms:
  small: {{method: lora, fixed: {{r: 2}}}}
  large: {{method: lora, fixed: {{r: 8}}}}
search: {{trials_per_arm: 2}}
"""
DATASET_LINE = 5


@dataclass(frozen=True)
class Expect:
    where: str  # "data" or "hypothesis"
    line: int
    field: str
    message: str

    def matches(self, issue: SpecIssue, data: Path, hypothesis: Path) -> bool:
        file = str(data if self.where == "data" else hypothesis)
        return (issue.file, issue.line, issue.field) == (file, self.line, self.field) and self.message in issue.message


def sidecar(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in Path(f"{path}.expect").read_text().splitlines():
        if raw.startswith("#"):
            continue
        key, _, value = raw.partition(": ")
        out.setdefault(key, []).append(value)
    return out


def expectations(path: Path) -> list[Expect]:
    out = []
    for value in sidecar(path).get("expect", []):
        where, line, field, message = value.split(" ", 3)
        out.append(Expect(where, int(line), "" if field == "-" else field, message))
    assert out, f"{path.name}.expect states no expectation"
    return out


def probe(folder: Path, data: Path, task: dict | None = None) -> Path:
    """A small hypothesis in ``folder`` whose task reads ``data``."""
    kind = "jsonl" if data.suffix == ".jsonl" else "csv"
    extra = "".join(f"  {key}: {json.dumps(value)}\n" for key, value in (task or {}).items())
    path = folder / "probe.yaml"
    path.write_text(PROBE.format(dataset=json.dumps(f"{kind}:{data}"), task=extra))
    return path


def probe_for(folder: Path, data: Path) -> Path:
    task = yaml.safe_load(sidecar(data)["task"][0]) if "task" in sidecar(data) else None
    return probe(folder, data, task)


def issues_of(hypothesis: Path) -> list[SpecIssue]:
    with pytest.raises(SpecError) as info:
        load_hypothesis(hypothesis)
    return info.value.issues


def assert_issues(hypothesis: Path, data: Path, expected: list[Expect], capsys) -> None:
    """Exactly the expected issues from the loader, then the same lines from
    ``orchestrate validate`` with exit 2."""
    issues = issues_of(hypothesis)
    shown = "\n".join(map(str, issues))
    assert len(issues) == len(expected), f"expected {len(expected)} issue(s), got:\n{shown}"
    remaining = list(expected)
    for issue in issues:
        match = next((e for e in remaining if e.matches(issue, data, hypothesis)), None)
        assert match is not None, f"unexpected issue {issue}\nexpected: {remaining}"
        remaining.remove(match)
    capsys.readouterr()
    assert main(["validate", str(hypothesis)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "ok" not in captured.out
    assert captured.err.splitlines() == [str(i) for i in issues]


def test_the_corpus_is_large():
    assert len(BAD) + len(GENERATED) >= 22
    assert len(GOOD) >= 6


@pytest.mark.parametrize("data", BAD, ids=lambda p: p.name)
def test_bad_data_file(data: Path, tmp_path: Path, capsys):
    assert_issues(probe_for(tmp_path, data), data, expectations(data), capsys)


@pytest.mark.parametrize("data", BAD, ids=lambda p: p.name)
def test_the_run_refuses_what_validation_refuses(data: Path):
    """The run's own loading applies the same rules: one line, exit 2's error type."""
    task = yaml.safe_load(sidecar(data)["task"][0]) if "task" in sidecar(data) else {}
    caps = {
        "train": task.get("train_examples"),
        "validation": task.get("val_examples"),
        "test": task.get("test_examples"),
    }
    with pytest.raises(DataFileError) as info:
        load_dataset(
            f"{data.suffix[1:]}:{data}", ROOT, task.get("text_column", "text"), task.get("label_column", "label"), caps
        )
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("data", GOOD, ids=lambda p: p.name)
def test_good_data_file_loads(data: Path, tmp_path: Path):
    facts = sidecar(data)
    task = yaml.safe_load(facts["task"][0]) if "task" in facts else {}
    load_hypothesis(probe(tmp_path, data, task))
    loaded = load_dataset(
        f"{data.suffix[1:]}:{data}", tmp_path, task.get("text_column", "text"), task.get("label_column", "label")
    )
    assert loaded.label_names == json.loads(facts["labels"][0])
    assert sum(loaded.sizes().values()) == int(facts["rows"][0])


def test_multiline_fields_and_bom_read_as_written():
    data = load_dataset(f"csv:{CORPUS / 'good' / 'multiline_quoted.csv'}", ROOT)
    texts = [t for texts, _ in data.splits.values() for t in texts]
    assert 'a review number 0, second line "quoted"' in texts  # the line break is whitespace, collapsed
    bom = load_dataset(f"csv:{CORPUS / 'good' / 'bom.csv'}", ROOT)
    assert not any(t.startswith("\ufeff") for texts, _ in bom.splits.values() for t in texts)


# -- cases that cannot sit in git ----------------------------------------------------------


def _folder(tmp: Path) -> Path:
    (tmp / "data.csv").mkdir()
    return tmp / "data.csv"


def _symlink_loop(tmp: Path) -> Path:
    (tmp / "a.csv").symlink_to(tmp / "b.csv")
    (tmp / "b.csv").symlink_to(tmp / "a.csv")
    return tmp / "a.csv"


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "data.csv")  # never opened for writing: reading it would block forever
    return tmp / "data.csv"


def _missing(tmp: Path) -> Path:
    return tmp / "nowhere.csv"


def _huge_field(tmp: Path) -> Path:
    rows = [f"review number {i},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    rows[2] = "x" * 5_000_000 + ",pos"
    (tmp / "data.csv").write_text("\n".join(["text,label", *rows]) + "\n")
    return tmp / "data.csv"


def _over_the_size_limit(tmp: Path) -> Path:
    with open(tmp / "data.csv", "wb") as handle:  # sparse: no disk used, never read
        handle.truncate(data_files.MAX_FILE_BYTES + 1)
    return tmp / "data.csv"


GENERATED: dict[str, tuple[Callable[[Path], Path], list[Expect]]] = {
    "folder": (_folder, [Expect("hypothesis", DATASET_LINE, "task.dataset", "is a folder; name a .csv file")]),
    "symlink_loop": (
        _symlink_loop,
        [Expect("hypothesis", DATASET_LINE, "task.dataset", "is a loop of symbolic links")],
    ),
    "fifo": (
        _fifo,
        [Expect("hypothesis", DATASET_LINE, "task.dataset", "is not a regular file (a FIFO, socket or device)")],
    ),
    "missing": (_missing, [Expect("hypothesis", DATASET_LINE, "task.dataset", "no such file")]),
    "huge_field": (_huge_field, [Expect("data", 4, "text", "a field of 5,000,000 characters, more than 100,000")]),
    "over_the_size_limit": (
        _over_the_size_limit,
        [Expect("hypothesis", DATASET_LINE, "task.dataset", "GiB, more than the 1 GiB")],
    ),
}


@pytest.mark.parametrize("name", GENERATED)
def test_generated_bad_data(name: str, tmp_path: Path, capsys):
    make, expected = GENERATED[name]
    data = make(tmp_path)
    assert_issues(probe(tmp_path, data), data, expected, capsys)


def test_unreadable_file(tmp_path: Path, capsys, monkeypatch):
    data = tmp_path / "data.csv"
    data.write_text("text,label\na,pos\nb,neg\n")
    data.chmod(0)
    if os.access(data, os.R_OK):  # root reads it anyway: the refusal is the one fault faked here
        real_open = os.open

        def refuse(path, *args):
            if Path(path) == data:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_open(path, *args)

        monkeypatch.setattr(os, "open", refuse)
    try:
        expected = [Expect("hypothesis", DATASET_LINE, "task.dataset", "permission denied; make it readable")]
        assert_issues(probe(tmp_path, data), data, expected, capsys)
    finally:
        data.chmod(0o600)


# -- where and how often --------------------------------------------------------------------

PROFILED = """\
name: profiled
statement: three profiles, two files
task:
  model: random:bert-tiny
  dataset: csv:data/blank_labels.csv
  max_length: 32
arms:
  small: {method: lora, fixed: {r: 2}}
  large: {method: lora, fixed: {r: 8}}
search: {trials_per_arm: 2}
profiles:
  smoke:
    task: {dataset: jsonl:data/bad_json_line.jsonl}
  again:
    task: {max_length: 16}
  missing:
    task: {dataset: csv:data/nowhere.csv}
"""


def _profiled(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    for name in ("blank_labels.csv", "bad_json_line.jsonl"):
        (tmp_path / "data" / name).write_bytes((CORPUS / name).read_bytes())
    (tmp_path / "h.yaml").write_text(PROFILED)
    return tmp_path / "h.yaml"


def test_every_profiles_file_is_checked_and_each_problem_reported_once(tmp_path: Path):
    issues = issues_of(_profiled(tmp_path))
    assert [(Path(i.file).name, i.line, i.field) for i in issues] == [
        ("bad_json_line.jsonl", 4, ""),
        ("blank_labels.csv", 5, "label"),
        ("h.yaml", 17, "task.dataset"),
    ]
    assert f"no such file {tmp_path / 'data' / 'nowhere.csv'}" in issues[2].message


def test_each_file_is_read_once(tmp_path: Path, monkeypatch):
    reads: list[Path] = []
    real = data_checks.read_records
    monkeypatch.setattr(data_checks, "read_records", lambda file: reads.append(file.path) or real(file))
    with pytest.raises(SpecError):
        load_hypothesis(_profiled(tmp_path))
    assert sorted(p.name for p in reads) == ["bad_json_line.jsonl", "blank_labels.csv", "nowhere.csv"]


def test_rejudging_reads_no_data(tmp_path: Path):
    """``judge --spec`` and the UI load a hypothesis without training: its data may be gone."""
    load_hypothesis(probe(tmp_path, tmp_path / "gone.csv"), check_requirements=False)


def test_five_hundred_labels_name_the_classes_and_counts(tmp_path: Path):
    (train, *_) = issues_of(probe(tmp_path, CORPUS / "five_hundred_labels.csv"))
    assert "of 500 classes have fewer than 2 examples in the train split" in train.message
    assert " and " in train.message and "more; use fewer classes (merge rare labels) or more data" in train.message


def test_plan_refuses_bad_data_too(tmp_path: Path, capsys):
    hypothesis = probe(tmp_path, CORPUS / "blank_labels.csv")
    assert main(["plan", str(hypothesis)]) == 2
    assert capsys.readouterr().err.startswith(f"{CORPUS / 'blank_labels.csv'}:5: label: no label")


RUN_AND_REPORT = """\
import sys
from orchestrator.cli import main
code = main(sys.argv[1:])
print("ray imported:", "ray" in sys.modules, "mlflow imported:", "mlflow" in sys.modules)
sys.exit(code)
"""


def test_run_with_bad_data_exits_2_before_mlflow_or_ray(tmp_path: Path):
    hypothesis = _profiled(tmp_path)
    store = tmp_path / "store" / "mlflow.db"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN_AND_REPORT,
            "run",
            str(hypothesis),
            "--profile",
            "smoke",
            "--quiet",
            "--tracking-uri",
            f"sqlite:///{store}",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert [line.split(": ")[0] for line in result.stderr.splitlines()] == [
        f"{tmp_path / 'data' / 'bad_json_line.jsonl'}:4",
        f"{tmp_path / 'data' / 'blank_labels.csv'}:5",
        f"{hypothesis}:17",
    ]
    assert not store.parent.exists() and not (tmp_path / "state").exists() and not (tmp_path / "mlflow.db").exists()
    assert "ray imported: False mlflow imported: False" in result.stdout
