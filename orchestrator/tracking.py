"""The only module that talks to MLflow.

Runs form a tree per invocation: hypothesis -> arm -> trial | confirm, linked with
``mlflow.parentRunId`` and tagged ``orchestrate.level`` / ``orchestrate.arm`` so the
UI's filter box finds them (``tags.orchestrate.arm = 'lora'``). Only the driver
writes; trial processes never import this module. We use ``MlflowClient`` rather
than the fluent API: no hidden global "active run", so a crash cannot leave a run
attached to the wrong parent. Every run name, param, tag, metric name and text artifact
passes through ``redact``: values of environment variables named like secrets
(``*TOKEN*``, ``*KEY*``, ``*SECRET*``, ``*PASSWORD*``...) never reach the store.

A store that cannot be used (a damaged sqlite file, a read-only one, a full disk) is a
``StoreError``: one line naming the store and what to do, exit 2. A damaged store is
found when the ``Tracker`` is made, before anything starts; a store that refuses a
write fails that write.

Writes in the background: inside ``Tracker.writes_in_background()`` (the search and
confirm loops, where Ray Tune's event loop makes the writes), a tracking server's writes
are queued on ``WriteLanes`` (``SERVER_WRITE_LANES`` threads, in order per run) and every
read first waits for them; the block waits for the last write before it ends, also when
it ends by an interrupt. A sqlite store is written synchronously (~9 ms a write, one
writer at a time). ``ORCHESTRATE_WRITE_LANES`` sets the number of lanes (0: synchronous).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from orchestrator.errors import InputError, StoreError
from orchestrator.write_lanes import WriteLanes

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_T = TypeVar("_T")

LEVEL = "orchestrate.level"
ARM = "orchestrate.arm"
REFINES = "orchestrate.refines"  # the hypothesis name a hypothesis run refines


def tracking_uri(explicit: str | None = None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ./mlflow.db (sqlite)."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


#: Threads writing to a tracking server during a search (docs/scale.md, "Tracking server").
SERVER_WRITE_LANES = 4
WRITE_LANES_VARIABLE = "ORCHESTRATE_WRITE_LANES"


def write_lanes(uri: str) -> int:
    """How many threads write to ``uri`` in the background: ``ORCHESTRATE_WRITE_LANES``
    when set; else none for a local store (sqlite or a folder: a write costs milliseconds
    and sqlite takes one writer at a time), ``SERVER_WRITE_LANES`` for a server."""
    value = os.environ.get(WRITE_LANES_VARIABLE, "").strip()
    if value:
        try:
            return max(0, int(value))
        except ValueError:
            raise InputError(
                f"{WRITE_LANES_VARIABLE}={value!r} in the environment is not a number of threads"
                " (0: write synchronously)"
            ) from None
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    return 0 if local else SERVER_WRITE_LANES


#: Environment variables whose values must never reach MLflow (defence in depth: nothing
#: logs the environment on purpose, but a trace, a config or a path might carry one).
_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)
_SECRET_MIN_LENGTH = 8  # shorter values ("1", "true") would redact ordinary text
REDACTED = "REDACTED"  # also valid inside MLflow param and metric names


def looks_secret(name: str, value: str | None = None) -> bool:
    """The one rule for what a secret is: a variable named like one (``*TOKEN*``,
    ``*KEY*``...) whose value, when given, is long enough to be one. ``ray_session``
    keeps such variables from Ray's processes by the same rule."""
    return bool(_SECRET_NAME.search(name)) and (value is None or len(value) >= _SECRET_MIN_LENGTH)


def _secret_values() -> list[str]:
    """Current values of secret-looking environment variables, longest first."""
    values = {v for k, v in os.environ.items() if looks_secret(k, v)}
    return sorted(values, key=len, reverse=True)


def redact(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with every secret environment value replaced by ``REDACTED``."""
    for secret in _secret_values() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _redact_mapping(items: dict[Any, Any]) -> dict[str, str]:
    secrets = _secret_values()
    return {redact(str(k), secrets): redact(str(v), secrets) for k, v in items.items()}


@contextlib.contextmanager
def _first_connection_lock(uri: str):
    """Serialise MLflow's first connection between drivers sharing one sqlite file.

    MLflow creates and migrates the tables on connecting; two ``orchestrate run`` started
    together on a new store crashed with "table registered_models already exists" or
    "No such index" (measured: 2 of 3 tries with 3 processes). The lock file lives in the
    temp folder, named after the database's absolute path; without ``fcntl`` (Windows)
    there is no lock.
    """
    database = uri.split(":///", 1)[1] if uri.startswith("sqlite:///") else ""
    try:
        import fcntl
    except ImportError:
        database = ""  # no fcntl: no lock
    if not database:
        yield
        return
    key = hashlib.sha256(os.path.abspath(database).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"orchestrate-mlflow-{key}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: What sqlite (through SQLAlchemy and MLflow), the file system or a tracking server says
#: when a store cannot be used, and what the user can do about it. A server's refusals come
#: first: its 403 body ("Permission denied") is not a read-only file.
_STORE_FAULTS = (
    (
        ("error code 401",),
        "refused the credentials ({found}); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        " in the environment to a user of that server",
    ),
    (
        ("error code 403",),
        "refused the request ({found}: permission denied); ask the experiment's owner or the server's admin"
        " for EDIT on it, or name another store with --tracking-uri",
    ),
    (
        ("file is not a database", "database disk image is malformed"),
        "is damaged ({found}); restore it from a copy, or name another store with --tracking-uri"
        " (a new file starts empty)",
    ),
    (
        ("readonly database", "read-only file system", "permission denied"),
        "is read-only ({found}); make it writable, or name another store with --tracking-uri",
    ),
    (
        ("database or disk is full", "no space left on device"),
        "cannot be written: the disk is full ({found}); free space, then run the same command again",
    ),
    (
        ("unable to open database file",),
        "cannot be opened ({found}); its folder must exist and be writable, or name another store with --tracking-uri",
    ),
)


def store_error(exc: BaseException, uri: str | None) -> StoreError | None:
    """``exc`` (or what caused it) as a ``StoreError`` when it says the store cannot be
    used; None for any other error."""
    chain, seen = [], set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        chain.append(str(link).lower())
        link = link.__cause__ or link.__context__
    text = " ".join(chain)
    if uri and uri.startswith(("http://", "https://")) and "permission denied" in text:
        # a server's refusal (its artifact upload says only "permission denied"), not a read-only file
        text += " error code 403"
    for signs, what in _STORE_FAULTS:
        found = next((sign for sign in signs if sign in text), None)
        if found:
            store = f"the MLflow store {display_uri(uri)}" if uri else "the MLflow store"
            return StoreError(f"{store} " + what.format(found=found))
    return None


def display_uri(uri: str) -> str:
    """The store as a user may be shown it: a server's address without user, password
    or query (which may hold a token); a file store as it is."""
    if uri.startswith("sqlite:") or "://" not in uri:
        return redact(uri)
    parts = urlsplit(uri)
    return redact(urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", "")))


def _retry(call: Callable[[], _T], attempts: int = 8, uri: str | None = None) -> _T:
    """SQLite answers "database is locked" under concurrent writers; wait and retry.
    A store that cannot be used raises ``StoreError`` (``store_error``)."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # mlflow wraps sqlalchemy errors in MlflowException
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                error = store_error(exc, uri)
                if error is not None:
                    raise error from exc
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


class Tracker:
    """A thin, retrying facade over ``MlflowClient`` with the calls the tool makes.

    Every MLflow read and write of the tool goes through a method here (so each is
    retried, redacted and its store faults named); code outside this module never
    calls ``client``, which stays reachable for tests that look at what was logged.
    """

    def __init__(self, uri: str | None = None) -> None:
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        # logs, then raises, what StoreError says
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        # MLflow prints two "View run ... at" lines on stdout when a run on a server ends, and
        # reads the run back to print them: a request more per trial, and lines across the
        # progress display (the run's URL is in the summary and `orchestrate ui`)
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.uri = tracking_uri(uri)
        with _first_connection_lock(self.uri):
            # connects, creates/migrates the tables: a damaged sqlite file fails here
            self.client = _retry(lambda: MlflowClient(tracking_uri=self.uri), uri=self.uri)
        self.write_lanes = write_lanes(self.uri)  # read now: a bad value stops the run before it starts
        self._lanes: WriteLanes | None = None

    def _call(self, call: Callable[[], _T]) -> _T:
        """A ``self.client`` call, retried while sqlite is locked; a store that cannot
        be used raises ``StoreError`` naming this store. A stop request (Ctrl-C, SIGTERM)
        waits for the call to end (``interrupts.deferred_stop``): never half a write."""
        from orchestrator.execute.interrupts import deferred_stop  # stdlib only; no cycle

        with deferred_stop():
            return _retry(call, uri=self.uri)

    def _read(self, call: Callable[[], _T]) -> _T:
        """A call that must see every write made before it: queued writes land first."""
        self.flush()
        return self._call(call)

    def _write(self, run_id: str, call: Callable[[], object]) -> None:
        """A write that returns nothing: queued behind the run's earlier writes inside
        ``writes_in_background``, made now outside it."""
        if self._lanes is None:
            self._call(call)
        else:
            self._lanes.submit(run_id, lambda: self._call(call))

    def flush(self) -> None:
        """Wait for the writes queued so far (none outside ``writes_in_background``); a
        failed one raises here."""
        if self._lanes is not None:
            from orchestrator.execute.interrupts import deferred_stop

            with deferred_stop():  # a stop request waits: the queued writes are the run's record
                self._lanes.flush()

    @contextlib.contextmanager
    def writes_in_background(self) -> Iterator[None]:
        """Inside the block, writes to a tracking server are queued (module docstring);
        the block ends when the last has been made, also on an interrupt or an error."""
        if not self.write_lanes or self._lanes is not None:  # local store, or already inside such a block
            yield
            return
        from orchestrator.execute.interrupts import deferred_stop

        self._lanes = WriteLanes(self.write_lanes, name="mlflow-writes")
        try:
            yield
        except BaseException:
            with deferred_stop():
                self._lanes.close(raise_failure=False)  # the exception on its way is the one to report
            raise
        else:
            with deferred_stop():
                self._lanes.close()
        finally:
            self._lanes = None

    def experiment_by_name(self, name: str) -> Any | None:
        """The MLflow experiment named ``name`` (also a deleted one), or None."""
        return self._read(lambda: self.client.get_experiment_by_name(name))

    def experiments(self) -> list[Any]:
        """Every active (not deleted) experiment of the store: one per hypothesis, and Default."""
        return list(self._read(lambda: self.client.search_experiments(max_results=50000)))

    def experiment_id(self, name: str) -> str:
        """The experiment's id, creating it once (a race with another driver is fine)."""
        existing = self.experiment_by_name(name)
        if existing is not None:
            if existing.lifecycle_stage == "deleted":
                self._call(lambda: self.client.restore_experiment(existing.experiment_id))
            return existing.experiment_id
        try:
            return self._call(
                lambda: self.client.create_experiment(name, artifact_location=self._artifact_location(name))
            )
        except Exception:
            found = self.experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _artifact_location(self, name: str) -> str | None:
        """With a sqlite store, artifacts go next to the database file (MLflow's
        default is ./mlruns of whatever folder the driver runs in)."""
        if not self.uri.startswith("sqlite:///"):
            return None
        database = Path(self.uri[len("sqlite:///") :]).resolve()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return (database.parent / "mlartifacts" / safe).as_uri()

    def start_run(self, experiment_id: str, name: str, tags: dict[str, str], parent_id: str | None = None) -> str:
        name = redact(name)
        all_tags = _redact_mapping({"mlflow.runName": name, **tags})
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self._call(lambda: self.client.create_run(experiment_id, tags=all_tags, run_name=name))
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        items = _param_items(params)
        for start in range(0, len(items), 100):  # partial binds this chunk now; a lambda would read `start` late
            self._write(run_id, functools.partial(self.client.log_batch, run_id, params=items[start : start + 100]))

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int | None = None) -> None:
        items = _metric_items(metrics, step)
        for start in range(0, len(items), 1000):
            self._write(run_id, functools.partial(self.client.log_batch, run_id, metrics=items[start : start + 1000]))

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        items = _tag_items(tags)
        for start in range(0, len(items), 100):
            self._write(run_id, functools.partial(self.client.log_batch, run_id, tags=items[start : start + 100]))

    def log_batch(
        self,
        run_id: str,
        metrics: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        step: int | None = None,
    ) -> None:
        """Metrics, params and tags of one run in one request where MLflow's limits allow
        (a trial's report: its metrics, the first time its runtime params and node tags).
        Each write is a transaction of the store: a trial that wrote them one by one cost
        seven per trial, the driver's largest per-trial cost at 32 concurrent trials
        (docs/scale.md)."""
        metric_items, param_items = _metric_items(metrics or {}, step), _param_items(params or {})
        tag_items = _tag_items(tags or {})
        total = len(metric_items) + len(param_items) + len(tag_items)
        if total > 1000 or len(param_items) > 100 or len(tag_items) > 100:  # MLflow's limits per request
            self.log_params(run_id, params or {})
            self.log_metrics(run_id, metrics or {}, step)
            self.set_tags(run_id, tags or {})
            return
        if metric_items or param_items or tag_items:
            self._write(
                run_id,
                functools.partial(
                    self.client.log_batch, run_id, metrics=metric_items, params=param_items, tags=tag_items
                ),
            )

    def delete_tag(self, run_id: str, key: str) -> None:
        """Remove a tag that no longer holds (absent: nothing to do)."""
        if key in self.get_run(run_id).data.tags:
            self._write(run_id, lambda: self.client.delete_tag(run_id, key))

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
        """Files are copied as they are (not redacted): only method artifacts go here.
        Always now, never queued: ``folder`` may be a download that is gone once the
        caller returns (a checkpoint in remote storage)."""
        if folder.exists() and any(folder.iterdir()):
            self._call(lambda: self.client.log_artifacts(run_id, str(folder), artifact_path))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        text = redact(text)
        self._write(run_id, lambda: self.client.log_text(run_id, text, artifact_file))

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._write(run_id, lambda: self.client.set_terminated(run_id, status=status))

    def reopen_run(self, run_id: str) -> None:
        """A run a resumed driver goes on with: RUNNING again."""
        self._write(run_id, lambda: self.client.update_run(run_id, status="RUNNING"))

    def run_status(self, run_id: str) -> str | None:
        """The run's status; None when the store has no such run."""
        self.flush()
        try:
            return self.client.get_run(run_id).info.status
        except Exception as exc:
            error = store_error(exc, self.uri)
            if error is not None:
                raise error from exc
            return None

    def search_runs(self, experiment_ids: list[str], filter_string: str = "", max_results: int = 5000) -> list[Any]:
        return list(
            self._read(
                lambda: self.client.search_runs(experiment_ids, filter_string=filter_string, max_results=max_results)
            )
        )

    def get_run(self, run_id: str) -> Any:
        return self._read(lambda: self.client.get_run(run_id))

    def metric_history(self, run_id: str, key: str) -> dict[int, float]:
        """Every value one run logged for ``key``, by step (a trial's step is its epoch);
        the last value where a step was logged twice."""
        return {m.step: m.value for m in self._read(lambda: self.client.get_metric_history(run_id, key))}

    def list_artifacts(self, run_id: str, folder: str | None = None) -> list[Any]:
        """The entries (``FileInfo``: ``path``, ``is_dir``) of one folder of a run's
        artifacts; the top folder when ``folder`` is None."""
        return list(self._read(lambda: self.client.list_artifacts(run_id, folder)))

    def download_artifact(self, run_id: str, path: str, folder: Path) -> Path:
        """A run's artifact (file or folder) copied into ``folder``; its local path."""
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        return Path(self._read(lambda: self.client.download_artifacts(run_id, path, str(folder))))

    def read_text(self, run_id: str, path: str) -> str | None:
        """The text of one artifact of a run, or None when the run has no such file."""
        folder = str(Path(path).parent) if "/" in path else None
        if path not in {entry.path for entry in self.list_artifacts(run_id, folder) if not entry.is_dir}:
            return None
        with tempfile.TemporaryDirectory(prefix="orchestrate-read-") as scratch:
            return self.download_artifact(run_id, path, Path(scratch)).read_text()


def _param_items(params: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    secrets = _secret_values()
    return [Param(redact(str(k), secrets), redact(_param_value(v), secrets)) for k, v in params.items()]


def _metric_items(metrics: dict[str, Any], step: int | None) -> list[Any]:
    """Finite-or-NaN numbers only (MLflow refuses infinities; bools are not metrics)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    secrets = _secret_values()
    return [
        Metric(redact(str(k), secrets), float(v), now, step or 0)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isinf(float(v))
    ]


def _tag_items(tags: dict[str, Any]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(k, v[:5000]) for k, v in _redact_mapping(tags).items()]


def _param_value(value: Any) -> str:
    text = repr(value) if isinstance(value, float) else str(value)
    return text[:6000]
