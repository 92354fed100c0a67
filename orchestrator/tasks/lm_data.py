"""Prompt + completion datasets for causal language models, split deterministically.

References a spec may use for ``task.dataset`` (``task.type: causal-lm``):

- ``embedded:rotten-tomatoes-lm`` - the Rotten Tomatoes snippets of
  ``embedded:rotten-tomatoes`` (``orchestrator.tasks.datasets``) as an instruction task:
  the prompt is ``INSTRUCTION`` around the review, the completion its label word,
  `` positive`` (fresh) or `` negative`` (rotten). Scored by exact match of the
  generated answer.
- ``synthetic:polarity-lm`` - the generated polarity sentences of ``synthetic:polarity``
  the same way, shorter prompt (tests, smoke runs).
- a Hugging Face dataset id (``zwhe99/commonsense_170k``) on machines that reach the hub
  (the ``hub`` extra), its columns named by the same two settings; its own validation
  and test splits where it has them, else carved from train by the hash below.
- ``csv:PATH`` / ``jsonl:PATH`` - your data, a prompt and a completion per row
  (``task.prompt_column``, ``task.completion_column``; default ``prompt``,
  ``completion``). Read by ``orchestrator.tasks.data_files`` (path, encoding and layout
  as for text: docs/data.md) and checked here: the columns exist, no prompt or
  completion is blank, no field is over ``MAX_FIELD_CHARS``, the same prompt never has
  two completions. Each problem at its FILE:LINE. A prompt + completion longer than
  ``task.max_length`` tokens is refused at its line when the run tokenises the file
  (``orchestrator.tasks.types.causal_lm``): never cut, the completion must fit.

Values are kept as written (whitespace included: a completion's leading space is part
of its first token). Splits: 60/20/20 by a stable hash of the prompt, as for text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import DataFileError
from orchestrator.spec.errors import SpecIssue
from orchestrator.tasks.data_checks import MAX_FIELD_CHARS
from orchestrator.tasks.data_files import DataProblem, Records, RowProblems, clip, json_type, read_records
from orchestrator.tasks.datasets import (
    SPLITS,
    DatasetUnavailableError,
    LocalDataFile,
    load_hub,
    local_data_file,
    stable_bucket,
)

if TYPE_CHECKING:
    from orchestrator.spec.models import TaskSpec
    from orchestrator.spec.yaml_lines import LocatedYaml

EMBEDDED_LM_DATASETS = ("embedded:rotten-tomatoes-lm",)
SYNTHETIC_LM_DATASETS = ("synthetic:polarity-lm",)
#: The embedded task's prompt: a short instruction, the review, and where the answer goes.
INSTRUCTION = "Is this movie review positive or negative?\nReview: {text}\nAnswer:"
SYNTHETIC_PROMPT = "{text}\nSentiment:"
LABEL_WORDS = (" negative", " positive")  # label 0, 1


@dataclass(frozen=True)
class LmExample:
    prompt: str
    completion: str
    line: int | None = None  # its line in the user's file (None: built in)


@dataclass(frozen=True)
class LmDataset:
    """Examples per split, and the file they came from (None: built in)."""

    splits: dict[str, list[LmExample]]
    path: Path | None = None

    def sizes(self) -> dict[str, int]:
        return {name: len(examples) for name, examples in self.splits.items()}


def lm_dataset_ref_problem(ref: str) -> str | None:
    """Syntactic check for validation (no file reading, no network)."""
    if ref in EMBEDDED_LM_DATASETS or ref in SYNTHETIC_LM_DATASETS:
        return None
    if ref.startswith(("csv:", "jsonl:")):
        return None if ref.split(":", 1)[1] else f"{ref!r} needs a path after the colon"
    if not ref.startswith(("embedded:", "synthetic:", "imagefolder:")):
        return None  # a hub id: checked when loaded
    built_in = ", ".join(EMBEDDED_LM_DATASETS + SYNTHETIC_LM_DATASETS)
    return (
        f"{ref!r} is not a prompt + completion dataset; causal-lm takes {built_in}, csv:PATH, jsonl:PATH or a hub id"
    )


def load_lm_dataset(ref: str, base_dir: Path, prompt_column: str, completion_column: str) -> LmDataset:
    """The dataset ``ref`` names, split; ``DataFileError`` for a local file that breaks a rule."""
    if problem := lm_dataset_ref_problem(ref):
        raise DatasetUnavailableError(problem)
    if ref in EMBEDDED_LM_DATASETS:
        from orchestrator.tasks.datasets import _rotten_tomatoes

        texts, labels = _rotten_tomatoes()
        return split_examples(_labelled(texts, labels, INSTRUCTION))
    if ref in SYNTHETIC_LM_DATASETS:
        from orchestrator.tasks.datasets import synthetic_polarity

        texts, labels = synthetic_polarity()
        return split_examples(_labelled(texts, labels, SYNTHETIC_PROMPT))
    file = local_data_file(ref, base_dir)
    if file is None:
        return _hub_lm(ref, prompt_column, completion_column)
    examples, problems = check_lm_records(read_records(file), prompt_column, completion_column)
    if problems:
        first = problems[0]
        where = f"{file.path}:{first.line}: {first.column + ': ' if first.column else ''}" if first.line else ""
        more = f" (and {len(problems) - 1} more: orchestrate validate lists them)" if len(problems) > 1 else ""
        raise DataFileError(where + first.message + more)
    return split_examples(examples, file.path)


def _hub_lm(ref: str, prompt_column: str, completion_column: str) -> LmDataset:
    name, _, config = ref.partition(":")
    loaded = load_hub(ref, name, config, f"{', '.join(EMBEDDED_LM_DATASETS)} or csv:PATH / jsonl:PATH")
    for column in (prompt_column, completion_column):
        if column not in loaded["train"].column_names:
            raise DatasetUnavailableError(
                f"dataset {ref!r} has no column {column!r} (columns: {', '.join(loaded['train'].column_names)}); "
                "set task.prompt_column / task.completion_column"
            )

    def part(split: str) -> list[LmExample]:
        rows = loaded[split]
        return [LmExample(str(p), str(c)) for p, c in zip(rows[prompt_column], rows[completion_column], strict=True)]

    if "validation" in loaded and "test" in loaded:
        return LmDataset({"train": part("train"), "validation": part("validation"), "test": part("test")})
    return split_examples(part("train") + (part("test") if "test" in loaded else []))


def _labelled(texts: list[str], labels: list[int], template: str) -> list[LmExample]:
    return [
        LmExample(template.format(text=text), LABEL_WORDS[label]) for text, label in zip(texts, labels, strict=True)
    ]


def split_examples(examples: list[LmExample], path: Path | None = None) -> LmDataset:
    """60/20/20 by ``stable_bucket`` of the prompt; each split in the prompts' sha1 order
    (``datasets.hash_split``'s rule), so a cap picks the same examples whatever the row order."""
    import hashlib

    out: dict[str, list[LmExample]] = {name: [] for name in SPLITS}
    for example in sorted(examples, key=lambda e: hashlib.sha1(e.prompt.encode()).digest()):
        bucket = stable_bucket(example.prompt)
        out["train" if bucket < 60 else "validation" if bucket < 80 else "test"].append(example)
    return LmDataset(out, path)


def lm_data_file_issues(tasks: Iterable[tuple[TaskSpec, LocatedYaml]], base_dir: Path) -> list[SpecIssue]:
    """Every problem of the local files these tasks name, once per (file, columns)."""
    issues: list[SpecIssue] = []
    seen: set[tuple[LocalDataFile, str, str]] = set()
    for task, located in tasks:
        file = local_data_file(task.dataset, base_dir)
        key = (file, task.prompt_column, task.completion_column) if file else None
        if file is None or key is None or key in seen:
            continue
        seen.add(key)
        for problem in check_lm_records(read_records(file), task.prompt_column, task.completion_column)[1]:
            if problem.line is not None:
                issues.append(SpecIssue(str(file.path), problem.line, problem.column, problem.message))
            else:
                line = located.line_of(("task", problem.task_field))
                issues.append(SpecIssue(located.file, line, f"task.{problem.task_field}", problem.message))
    return issues


def check_lm_records(
    records: Records, prompt_column: str, completion_column: str
) -> tuple[list[LmExample], list[DataProblem]]:
    """The examples of every row, or the problems (then no examples)."""
    problems = list(records.problems)
    if records.header is None and not records.rows:
        return [], problems
    columns = {prompt_column: "prompt_column", completion_column: "completion_column"}
    if records.header is not None:
        present = ", ".join(map(repr, records.header))
        for column, setting in columns.items():
            if column not in records.header:
                problems.append(
                    DataProblem(
                        f"no column {column!r} (columns: {present}); set task.{setting} to one of them",
                        records.header_line,
                        column,
                    )
                )
        if problems:
            return [], problems
    rows = RowProblems()
    examples: list[LmExample] = []
    first_of: dict[str, tuple[int, str]] = {}
    for line, row in records.rows:
        values = _row_values(row, records.header, columns, line, rows)
        if values is None:
            continue
        prompt, completion = values
        first = first_of.setdefault(prompt, (line, completion))
        if first[1] != completion:
            rows.add(
                "conflict",
                DataProblem(
                    f"the same prompt as line {first[0]} with another completion ({clip(first[1])} there, "
                    f"{clip(completion)} here); exact match scores one of them wrong, keep one",
                    line,
                    completion_column,
                ),
            )
            continue
        examples.append(LmExample(prompt, completion, line))
    problems += rows.problems()
    return ([], problems) if problems else (examples, [])


def _row_values(
    row: Any, header: list[str] | None, columns: dict[str, str], line: int, rows: RowProblems
) -> tuple[str, str] | None:
    values = []
    for column, setting in columns.items():
        if header is not None:
            value = row[header.index(column)]
        elif column in row:
            value = row[column]
        else:
            rows.add(
                "key", DataProblem(f"no key {column!r}; set task.{setting} or give every row that key", line, column)
            )
            continue
        if not isinstance(value, str):
            kind = json_type(value)
            rows.add(
                "type", DataProblem(f"a JSON {kind}, not a string; quote it, or check task.{setting}", line, column)
            )
        elif len(value) > MAX_FIELD_CHARS:
            rows.add(
                "size",
                DataProblem(f"a field of {len(value):,} characters, more than {MAX_FIELD_CHARS:,}", line, column),
            )
        elif not value.strip():
            what = setting.removesuffix("_column")
            rows.add("blank", DataProblem(f"blank {what}; give the row its {what} or delete it", line, column))
        else:
            values.append(value)
    return (values[0], values[1]) if len(values) == 2 else None
