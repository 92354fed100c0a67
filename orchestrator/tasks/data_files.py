"""Read a user's data file (``csv:PATH`` / ``jsonl:PATH``) into rows, each with its line.

The first half of the checks ``data_checks`` makes (the module docstring there lists
every rule): the path (a regular, readable file of at most ``MAX_FILE_BYTES``; a FIFO is
never read, it would block), the encoding (UTF-8, a BOM dropped) and the layout (csv rows
as wide as the header, one JSON object per jsonl line). Problems come back as
``DataProblem``s with their lines, grouped by kind (``RowProblems``), never raised: the
validator reports them all at once.

Hand-written because no library reads csv/jsonl *and* says which line is wrong: the
``csv`` module and ``json`` parse, this module keeps the lines.
"""

from __future__ import annotations

import codecs
import csv
import errno
import io
import json
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.tasks.datasets import LocalDataFile

#: Parsed, a file takes ~10x its size in memory (measured: a 17 MB csv of 200k rows,
#: 180 MB, the old loader alike): 1 GiB is ~10 GiB, the most a one-machine run should need.
MAX_FILE_BYTES = 1 << 30
#: Line numbers, or classes, that one message names before "...".
SHOWN = 5


@dataclass(frozen=True)
class DataProblem:
    """One thing wrong with a data file. ``line`` is a line of the data file (``column``
    names its field); None means the file as a whole, reported at the hypothesis's
    ``task.<task_field>``, so the message names the file."""

    message: str
    line: int | None = None
    column: str = ""
    task_field: str = "dataset"


@dataclass(frozen=True)
class Records:
    """A parsed file before columns are chosen: csv rows (lists) or jsonl objects (dicts),
    each with the line it starts on."""

    file: LocalDataFile
    header: list[str] | None = None
    header_line: int = 1
    rows: list[tuple[int, Any]] = field(default_factory=list)
    problems: list[DataProblem] = field(default_factory=list)


# -- reading: path, size, encoding, csv / jsonl layout -----------------------------------


def read_records(file: LocalDataFile) -> Records:
    data = _read_bytes(file)
    if isinstance(data, DataProblem):
        return Records(file, problems=[data])
    text = _decode(data)
    if isinstance(text, DataProblem):
        return Records(file, problems=[text])
    if not text.strip():
        needs = "a header row and data rows" if file.kind == "csv" else "one JSON object per line"
        return Records(file, problems=[DataProblem(f"{file.path} is empty; it needs {needs}")])
    return _csv_records(file, text) if file.kind == "csv" else _jsonl_records(file, text)


def _read_bytes(file: LocalDataFile) -> bytes | DataProblem:
    """Opened without blocking (a FIFO would wait for a writer), checked with fstat on
    the open descriptor (no race between the check and the read), then read whole."""
    path = file.path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return DataProblem(
            f"no such file {path} (a relative path is read from the hypothesis file's folder); fix task.dataset"
        )
    except ValueError:
        return DataProblem(f"the path {str(path)!r} contains a NUL byte; fix task.dataset")
    except OSError as exc:
        return DataProblem(_open_error(path, exc))
    info = os.fstat(fd)
    problem = _not_readable(file, info)
    if problem is not None:
        os.close(fd)
        return problem
    with open(fd, "rb") as handle:  # closes fd
        try:
            data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            return DataProblem(f"cannot read {path}: {exc.strerror or exc}; check the file")
    if len(data) > MAX_FILE_BYTES:  # it grew while we read
        return DataProblem(
            f"{path} is more than the {MAX_FILE_BYTES >> 30} GiB a data file may be; sample or split it"
        )
    return data


def _not_readable(file: LocalDataFile, info: os.stat_result) -> DataProblem | None:
    path = file.path
    if stat.S_ISDIR(info.st_mode):
        return DataProblem(f"{path} is a folder; name a .{file.kind} file in task.dataset ({file.kind}:PATH)")
    if not stat.S_ISREG(info.st_mode):
        return DataProblem(
            f"{path} is not a regular file (a FIFO, socket or device); save the data to a file and name that"
        )
    if info.st_size > MAX_FILE_BYTES:
        return DataProblem(
            f"{path} is {info.st_size / (1 << 30):.1f} GiB, more than the {MAX_FILE_BYTES >> 30} GiB a data file "
            "may be; sample or split it"
        )
    return None


def _open_error(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return f"{path} is a loop of symbolic links; point task.dataset at the real file"
    if exc.errno == errno.EACCES:
        return f"cannot read {path}: permission denied; make it readable (chmod u+r)"
    return f"cannot open {path}: {exc.strerror or exc}; fix task.dataset"


def _decode(data: bytes) -> str | DataProblem:
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return str(memoryview(data)[skip:], "utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + skip
        hint = " (it looks like UTF-16)" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else ""
        line = data.count(b"\n", 0, offset) + 1
        return DataProblem(
            f"not UTF-8: byte 0x{data[offset]:02x} at byte offset {offset}{hint}; save the file as UTF-8", line
        )


def _csv_records(file: LocalDataFile, text: str) -> Records:
    """csv's own line count (``line_num``) gives each row's first line: a quoted field may
    span lines. The field limit is raised for the read only: the cap that matters is
    ``MAX_FIELD_CHARS`` on the columns used, with its line."""
    problems = RowProblems()
    header: list[str] | None = None
    header_line = 1
    rows: list[tuple[int, list[str]]] = []
    previous_limit = csv.field_size_limit(MAX_FILE_BYTES + 1)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        end = 0
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row:  # a blank line
                continue
            if header is None:
                header, header_line = row, start
            elif len(row) != len(header):
                problems.add("short" if len(row) < len(header) else "long", _width_problem(row, header, start, end))
            else:
                rows.append((start, row))
    except csv.Error as exc:  # not seen with the default dialect; kept one line, with its line
        problems.add("csv", DataProblem(f"not valid CSV: {exc}", reader.line_num))
    finally:
        csv.field_size_limit(previous_limit)
    found = problems.problems()
    if not rows and not found:
        found.append(DataProblem(f"{file.path} has a header but no data rows; add rows"))
    return Records(file, header, header_line, rows, found)


def _width_problem(row: list[str], header: list[str], start: int, end: int) -> DataProblem:
    spans = f" (the row runs from line {start} to {end}: an unclosed quote?)" if end > start else ""
    if len(row) < len(header):
        return DataProblem(
            f"too few fields: {len(row)} where the header has {len(header)}{spans}; add the missing fields", start
        )
    return DataProblem(
        f"too many fields: {len(row)} where the header has {len(header)}{spans}; "
        'put a field that contains a comma in double quotes ("a, b")',
        start,
    )


def _jsonl_records(file: LocalDataFile, text: str) -> Records:
    """Lines split at "\\n" only: a JSON string may hold U+2028, which ``splitlines`` breaks at."""
    problems = RowProblems()
    rows: list[tuple[int, Any]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.add(
                "json",
                DataProblem(f"not valid JSON: {exc.msg} (column {exc.colno}); write one JSON object per line", number),
            )
            continue
        except (ValueError, RecursionError) as exc:  # a 5000-digit number; [[[[... nested past the stack
            problems.add(
                "json",
                DataProblem(f"not valid JSON: {str(exc).split(';')[0]}; write one JSON object per line", number),
            )
            continue
        if not isinstance(value, dict):
            problems.add(
                "object",
                DataProblem(
                    f"a JSON {json_type(value)}, not an object; write one object per line, "
                    '{"text": "...", "label": "..."}',
                    number,
                ),
            )
            continue
        rows.append((number, value))
    return Records(file, rows=rows, problems=problems.problems())


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {str: "string", int: "number", float: "number", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def clip(value: str) -> str:
    return repr(shorten(value))


def shorten(value: str, limit: int = 40) -> str:
    """A user's value quoted in a message: enough to find it, never a whole paragraph."""
    return value if len(value) <= limit else value[:limit] + "..."


class RowProblems:
    """Problems of one kind in one column on many rows, reported
    once: at the first row, with the count and the first few line numbers."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str], list[DataProblem]] = {}  # (column, kind): the first SHOWN
        self._counts: Counter[tuple[str, str]] = Counter()

    def add(self, kind: str, problem: DataProblem) -> None:
        key = (problem.column, kind)
        self._counts[key] += 1
        group = self._groups.setdefault(key, [])
        if len(group) <= SHOWN:
            group.append(problem)

    def problems(self) -> list[DataProblem]:
        out = []
        for key, group in self._groups.items():
            first, count = group[0], self._counts[key]
            if count > 1:
                lines = ", ".join(str(p.line) for p in group[:SHOWN]) + (", ..." if count > SHOWN else "")
                first = DataProblem(f"{first.message} ({count} rows: lines {lines})", first.line, first.column)
            out.append(first)
        return out
