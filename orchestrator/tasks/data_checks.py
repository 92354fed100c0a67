"""Read and check a user's data file (``csv:PATH`` / ``jsonl:PATH``), once, the same way
for ``orchestrate validate`` / ``plan`` / ``run`` (before anything starts) and for the
run's own loading, so a run never sees data that validation judged differently.
Reading (path, encoding, layout) is ``data_files``; this module checks the columns,
values and classes, and turns problems into ``SpecIssue``s or a ``DataFileError``.

The rules (docs/data.md says them for users):

- the path: a regular, readable file of at most ``MAX_FILE_BYTES``; a folder, a symbolic
  link loop, a FIFO or device, a missing or unreadable file is refused (a FIFO is never
  read: it would block);
- encoding: UTF-8 only; a UTF-8 byte order mark is dropped (so the header ``text`` is
  found); another byte is refused at its line, with its byte offset;
- layout: csv has a header row and as many fields in every row (a quoted field may span
  lines; a row's line is where it starts); jsonl has one JSON object per line; blank
  lines are skipped; an empty file or a header without rows is refused;
- columns: ``task.text_column`` and ``task.label_column`` are in the header, or in every
  jsonl object;
- values: a text is a non-blank string (whitespace runs become one space, as before); a
  label is a non-blank string, an integer or true/false (jsonl null = no label); no
  field over ``MAX_FIELD_CHARS``; texts are not dropped silently, a blank one is an error;
- duplicates: the same text twice with one label is kept (both land in the same split);
  with two different labels it is an error (some copy would be scored wrong whatever the
  model does);
- classes: at least 2; after the 60/20/20 split and the task's caps (the first
  ``train_examples`` / ``val_examples`` / ``test_examples`` of each split, as
  ``prepare_task`` takes them) every class has ``MIN_TRAIN_EXAMPLES_PER_CLASS`` training
  examples and at least one in validation and in test.

Labels keep today's order: integers numerically first, then the rest sorted as text.
A problem of a line is reported at that line of the data file; one of the file as a
whole at the hypothesis line that names it (``task.dataset``, or the cap at fault). The
same kind of problem on many rows is one message: the first line, the count and the next
few line numbers.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import DataFileError
from orchestrator.spec.errors import SpecIssue
from orchestrator.tasks.data_files import (
    SHOWN,
    DataProblem,
    Records,
    RowProblems,
    clip,
    json_type,
    read_records,
    shorten,
)
from orchestrator.tasks.datasets import SPLITS, LocalDataFile, TextDataset, hash_split, local_data_file

if TYPE_CHECKING:
    from orchestrator.spec.models import TaskSpec
    from orchestrator.spec.yaml_lines import LocatedYaml

#: Texts are cut to ``task.max_length`` tokens (at most 4096); a field 25x longer than
#: that many words is a broken quote or the wrong column, not a text.
MAX_FIELD_CHARS = 100_000
#: A class seen once in training cannot be learned, only memorised.
MIN_TRAIN_EXAMPLES_PER_CLASS = 2

_CAP_FIELDS = {"train": "train_examples", "validation": "val_examples", "test": "test_examples"}
_INTEGER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class Checked:
    """The split dataset, or the problems that stop it."""

    dataset: TextDataset | None
    problems: list[DataProblem]


# -- entry points ------------------------------------------------------------------------


def load_local_dataset(
    file: LocalDataFile, text_column: str, label_column: str, caps: dict[str, int | None] | None = None
) -> TextDataset:
    """What a run trains on; ``DataFileError`` (one line: the first problem, and how many
    more) where validation would have refused the file."""
    checked = check_records(read_records(file), text_column, label_column)
    dataset = checked.dataset
    problems = checked.problems if dataset is None else coverage_problems(dataset, file.path, caps)
    if problems:
        more = f" (and {len(problems) - 1} more: orchestrate validate lists them)" if len(problems) > 1 else ""
        raise DataFileError(_one_line(problems[0], file) + more)
    assert dataset is not None  # a Checked holds a dataset exactly when it has no problems
    return dataset


def data_file_issues(tasks: Iterable[tuple[TaskSpec, LocatedYaml]], base_dir: Path) -> list[SpecIssue]:
    """Every problem of the local data files these tasks name (a hypothesis and each of
    its profiles, with the lines of each), as ``SpecIssue``s. Each file is read once;
    a problem of its path is reported once, at the first task that names it."""
    records: dict[LocalDataFile, Records] = {}
    checked: dict[tuple[LocalDataFile, str, str], Checked] = {}
    issues: list[SpecIssue] = []
    for task, located in tasks:
        file = local_data_file(task.dataset, base_dir)
        if file is None:
            continue
        if file not in records:
            records[file] = read_records(file)
            issues += [_issue(p, file, located) for p in records[file].problems]
        key = (file, task.text_column, task.label_column)
        if key not in checked:
            checked[key] = check_records(records[file], task.text_column, task.label_column)
        result = checked[key]
        caps = {"train": task.train_examples, "validation": task.val_examples, "test": task.test_examples}
        problems = [p for p in result.problems if p not in records[file].problems]
        problems += coverage_problems(result.dataset, file.path, caps) if result.dataset is not None else []
        issues += [_issue(p, file, located) for p in problems]
    return issues


def _issue(problem: DataProblem, file: LocalDataFile, located: LocatedYaml) -> SpecIssue:
    if problem.line is not None:
        return SpecIssue(str(file.path), problem.line, problem.column, problem.message)
    return SpecIssue(
        located.file, located.line_of(("task", problem.task_field)), f"task.{problem.task_field}", problem.message
    )


def _one_line(problem: DataProblem, file: LocalDataFile) -> str:
    if problem.line is None:
        return problem.message
    return f"{file.path}:{problem.line}: " + (f"{problem.column}: " if problem.column else "") + problem.message


# -- columns and values ------------------------------------------------------------------


def check_records(records: Records, text_column: str, label_column: str) -> Checked:
    """Texts and labels from the chosen columns, every row checked; then the labels
    mapped and the rows split. Any problem: no dataset, only the problems."""
    problems = list(records.problems)
    if records.header is None and not records.rows:
        return Checked(None, problems)
    column_problems = _header_problems(records, text_column, label_column)
    if column_problems:
        return Checked(None, problems + column_problems)
    rows = _RowReader(records, text_column, label_column)
    problems += rows.problems.problems()
    if problems:
        return Checked(None, problems)
    names = sorted(set(rows.labels), key=_label_order)
    if len(names) < 2:
        return Checked(
            None,
            [
                DataProblem(
                    f"{records.file.path}: column {label_column!r} has a single label, {clip(names[0])} "
                    f"({len(rows.labels)} rows); a classifier needs at least 2 classes (check task.label_column)"
                )
            ],
        )
    index = {name: i for i, name in enumerate(names)}
    return Checked(hash_split(rows.texts, [index[label] for label in rows.labels], names), [])


def _header_problems(records: Records, text_column: str, label_column: str) -> list[DataProblem]:
    if records.header is None:
        return []
    present = ", ".join(map(repr, records.header))
    hint = (
        " (the file is read as comma-separated)"
        if len(records.header) == 1 and re.search("[\t;|]", records.header[0])
        else ""
    )
    out = []
    for column, setting in ((text_column, "text_column"), (label_column, "label_column")):
        count = records.header.count(column)
        if count == 0:
            out.append(
                DataProblem(
                    f"no column {column!r} (columns: {present}){hint}; set task.{setting} to one of them",
                    records.header_line,
                    column,
                )
            )
        elif count > 1:
            out.append(
                DataProblem(
                    f"column {column!r} appears {count} times in the header; rename the copies",
                    records.header_line,
                    column,
                )
            )
    return out


class _RowReader:
    """Walks the rows once: the normalised texts and labels, and every row problem."""

    def __init__(self, records: Records, text_column: str, label_column: str) -> None:
        self.texts: list[str] = []
        self.labels: list[str] = []
        self.problems = RowProblems()
        self._first: dict[str, tuple[int, str]] = {}
        self._columns = (text_column, label_column)
        positions = (records.header.index(text_column), records.header.index(label_column)) if records.header else None
        keys = ", ".join(map(repr, records.rows[0][1])) if records.rows and not records.header else ""
        for line, row in records.rows:
            if positions is not None:
                self._row(line, row[positions[0]], row[positions[1]])
            elif all(column in row for column in self._columns):
                self._row(line, row[text_column], row[label_column])
            else:
                for column, setting in ((text_column, "text_column"), (label_column, "label_column")):
                    if column not in row:
                        self.problems.add(
                            "key",
                            DataProblem(
                                f"no key {column!r} (keys of the first row: {keys}); set task.{setting} "
                                "or give every row that key",
                                line,
                                column,
                            ),
                        )

    def _row(self, line: int, raw_text: Any, raw_label: Any) -> None:
        text_column, label_column = self._columns
        for value, column in ((raw_text, text_column), (raw_label, label_column)):
            if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
                self.problems.add(
                    "size",
                    DataProblem(
                        f"a field of {len(value):,} characters, more than {MAX_FIELD_CHARS:,}: a broken "
                        "quote or the wrong column? (texts are cut to task.max_length tokens anyway)",
                        line,
                        column,
                    ),
                )
                return
        text, label = self._text(line, raw_text), self._label(line, raw_label)
        if text is None or label is None:
            return
        first = self._first.setdefault(text, (line, label))
        if first[1] != label:
            self.problems.add(
                "conflict",
                DataProblem(
                    f"the same text as line {first[0]} with another label ({clip(first[1])} there, "
                    f"{clip(label)} here); keep one label per text",
                    line,
                    label_column,
                ),
            )
            return
        self.texts.append(text)
        self.labels.append(label)

    def _text(self, line: int, value: Any) -> str | None:
        column = self._columns[0]
        if not isinstance(value, str):
            self.problems.add(
                "type",
                DataProblem(
                    f"the text is a JSON {json_type(value)}, not a string; quote it, or check task.text_column",
                    line,
                    column,
                ),
            )
            return None
        text = " ".join(value.split())
        if not text:
            self.problems.add("blank", DataProblem("blank text; give the row a text or delete it", line, column))
            return None
        return text

    def _label(self, line: int, value: Any) -> str | None:
        column = self._columns[1]
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        if value is not None and not isinstance(value, str):
            self.problems.add(
                "type",
                DataProblem(
                    f"a label must be a string, an integer or true/false, not a JSON {json_type(value)} "
                    f"({shorten(json.dumps(value))}); write it as a string or an integer",
                    line,
                    column,
                ),
            )
            return None
        label = (value or "").strip()
        if not label:
            self.problems.add(
                "blank", DataProblem("no label (blank or null); give the row its label or delete it", line, column)
            )
            return None
        return label


def _label_order(name: str) -> tuple[bool, int, str]:
    """Integer labels numerically (2 before 10), then the rest as text."""
    integer = _INTEGER.fullmatch(name) is not None
    return (not integer, int(name) if integer else 0, name)


# -- classes across the splits -----------------------------------------------------------


def coverage_problems(data: TextDataset, path: Path, caps: dict[str, int | None] | None = None) -> list[DataProblem]:
    """Every class in every split, enough of them in train: first as the file splits,
    then within the task's caps (blamed on the cap, which is what to change)."""
    out = []
    for split in SPLITS:
        labels = data.splits[split][1]
        cap = (caps or {}).get(split)
        if message := _short_classes(
            labels, data.label_names, split, f"in the {split} split (60/20/20 by a hash of the text)"
        ):
            out.append(DataProblem(f"{path}: {message}; use fewer classes (merge rare labels) or more data"))
        elif cap and (
            message := _short_classes(
                labels[:cap],
                data.label_names,
                split,
                f"in the first {cap} {split} examples (task.{_CAP_FIELDS[split]})",
            )
        ):
            out.append(
                DataProblem(
                    f"{path}: {message}; raise task.{_CAP_FIELDS[split]}, or use fewer classes",
                    task_field=_CAP_FIELDS[split],
                )
            )
    return out


def _short_classes(labels: list[int], names: list[str], split: str, where: str) -> str:
    minimum = MIN_TRAIN_EXAMPLES_PER_CLASS if split == "train" else 1
    counts = Counter(labels)
    short = sorted((counts[i], i) for i in range(len(names)) if counts[i] < minimum)
    if not short:
        return ""
    shown = ", ".join(f"{clip(names[i])} ({n})" for n, i in short[:SHOWN]) + (
        f" and {len(short) - SHOWN} more" if len(short) > SHOWN else ""
    )
    need = "never occur" if minimum == 1 else f"have fewer than {minimum} examples"
    return f"{len(short)} of {len(names)} classes {need} {where}: {shown}"
