"""The errors the command line turns into an exit code and one line of text.

``InputError`` and its kinds are problems with what the user brought or left behind
(a data file, a damaged state folder, an unusable MLflow store, a run already going in
the same folder), found before anything started: the CLI prints ``orchestrate: <message>``
and exits 2. The message is one line that names the file (and line, where there is
one) and says what to do. ``SpecError`` (``spec/errors.py``) is the same kind of thing
for hypothesis files, with one ``FILE:LINE: field: message`` line per problem.

A run that started and could not finish raises something else (``AllTrialsFailedError``,
``ModelUnavailableError``...): exit 1.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad input found before anything started: exit 2, one line."""


class DataFileError(InputError):
    """A local data file (``csv:`` / ``jsonl:``) that cannot be used as it is."""


class DamagedStateError(InputError):
    """A file the tool wrote earlier (run state, archive, lock) that is damaged.

    The message names the file and what to do: ``--fresh``, or delete the file."""


class StoreError(InputError):
    """The MLflow store cannot be used (corrupt, read-only, full, unreachable)."""


class RunLockedError(InputError):
    """Another ``orchestrate run`` of the same hypothesis and profile holds the state folder."""
