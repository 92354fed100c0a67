"""A group's shared tracking server, for real: ``mlflow server`` on PostgreSQL with its
artifacts served by the server and MLflow's basic-auth app in front (docs/cluster.md,
"A shared tracking server").

The test starts Debian's PostgreSQL on 127.0.0.1 in a temporary data directory (as the
``postgres`` system user when it runs as root: postgres refuses to run as root), the
server on 127.0.0.1 with a user made for the test, and two hypotheses at once, each a
``orchestrate run --tracking-uri http://127.0.0.1:PORT`` subprocess with the user's
credentials in ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` only. Then it
reads everything back through the server as that user: each run exactly once, verdicts
and the report as artifacts, ``judge`` / ``report`` / ``ui`` from the server, and no
credential anywhere in what was stored. A client without credentials, and a second user
who may only read, get one line saying what to do (``tracking._STORE_FAULTS``: before
them, a 401 was a traceback and a 403 said "make the store writable"). It skips, saying
what is missing, without
PostgreSQL's binaries, the ``postgres`` user, or the Python packages the server needs.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient  # credentials: MLFLOW_TRACKING_* set by the fixture

from helpers import TINY_HYPOTHESIS

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
NAMES = ("server-a", "server-b")
LEVEL_COUNTS = {"hypothesis": 1, "arm": 1, "trial": 2, "confirm": 2}
# One arm per hypothesis, as in test_concurrent_runs: two drivers racing one server is the
# point, a second arm would only add a Tuner.
ONE_ARM = (
    TINY_HYPOTHESIS.replace("  large: {method: lora, fixed: {r: 8}}\n", "")
    .replace("  - small.flops_ratio <= large.flops_ratio / 2\n", "  - small.flops_ratio <= 0.5\n")
    .replace("  - small.test_accuracy >= large.test_accuracy - 0.5\n", "  - small.test_accuracy >= 0\n")
)
assert "large" not in ONE_ARM, "TINY_HYPOTHESIS changed: update ONE_ARM"
RUN_TIMEOUT_S = 1500
SERVER_START_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class Credentials:
    """A user of the server; reaches the clients only through the environment."""

    username: str
    password: str

    def environment(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}

    def header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL: its superuser's password, port and postmaster pid."""

    port: int
    password: str
    pid: int

    def uri(self, database: str) -> str:
        return f"postgresql://postgres:{self.password}@{LOOPBACK}:{self.port}/{database}"


@dataclass(frozen=True)
class TrackingServer:
    """The authenticated server, the user the drivers run as, and where it keeps artifacts."""

    uri: str
    port: int
    pid: int
    user: Credentials
    admin: Credentials
    artifacts: Path
    postgres: Postgres

    def credentials_strings(self) -> list[str]:
        """Every credential that must never show up in a run."""
        return [self.user.username, self.user.password, self.admin.password, self.postgres.password]


@dataclass(frozen=True)
class DriverResult:
    name: str
    exit_code: int
    stdout: str
    stderr: str


# -- PostgreSQL ---------------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    """Debian keeps initdb and pg_ctl out of PATH, under /usr/lib/postgresql/VERSION/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


def _run_as(user: pwd.struct_passwd | None, command: list[str]) -> subprocess.CompletedProcess:
    """COMMAND as USER (root drops to it with runuser), or as ourselves when USER is None."""
    prefix = ["runuser", "-u", user.pw_name, "--"] if user is not None else []
    return subprocess.run(prefix + command, capture_output=True, text=True, timeout=120)


def _free_port() -> int:
    from orchestrator.cli.ui import free_port

    return free_port()


@contextlib.contextmanager
def postgres_on_loopback() -> Iterator[Postgres]:
    """initdb + pg_ctl start in a new temporary folder, listening on 127.0.0.1 only (its
    unix socket in that folder too); stopped and removed on exit, also after a failure."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` system user to run PostgreSQL as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root and `runuser` (util-linux) is missing to start PostgreSQL as `postgres`")
    folder = Path(tempfile.mkdtemp(prefix="orchestrate-pg-"))
    data = folder / "data"
    password = secrets.token_hex(16)
    try:
        (folder / "pwfile").write_text(password + "\n")
        if owner is not None:
            for path in (folder, folder / "pwfile"):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        init = _run_as(
            owner,
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "scram-sha-256",
                f"--pwfile={folder / 'pwfile'}",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
        )
        (folder / "pwfile").unlink()
        assert init.returncode == 0, init.stdout + init.stderr
        port = _free_port()
        start = _run_as(
            owner,
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(folder / "postgres.log"),
                "-w",
                "-t",
                "60",
                "-o",
                f"-h {LOOPBACK} -p {port} -k {folder}",
                "start",
            ],
        )
        assert start.returncode == 0, start.stdout + start.stderr + _tail(folder / "postgres.log")
        pid = int((data / "postmaster.pid").read_text().split()[0])
        try:
            yield Postgres(port=port, password=password, pid=pid)
        finally:
            stop = _run_as(owner, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
            if stop.returncode != 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)  # postgres's "immediate shutdown"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _create_databases(postgres: Postgres, *names: str) -> None:
    import psycopg

    # autocommit: CREATE DATABASE refuses to run in a transaction
    with psycopg.connect(
        host=LOOPBACK,
        port=postgres.port,
        user="postgres",
        password=postgres.password,
        dbname="postgres",
        autocommit=True,
    ) as connection:
        for name in names:
            connection.execute(f"CREATE DATABASE {name}")


# -- the MLflow server --------------------------------------------------------------------


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path} missing)"


def _request(url: str, header: str | None = None, body: dict | None = None) -> tuple[int, str]:
    """HTTP status and body of a GET (or a JSON POST when BODY is given)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if data:
        request.add_header("Content-Type", "application/json")
    if header:
        request.add_header("Authorization", header)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode(errors="replace")


def _server_command(port: int, artifacts: Path) -> list[str]:
    """The backend store comes from ``MLFLOW_BACKEND_STORE_URI``: its password stays out of ``ps``."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        "2",
        "--app-name",
        "basic-auth",
    ]


@contextlib.contextmanager
def tracking_server_on(postgres: Postgres, auth_cache_ttl_s: int = 0) -> Iterator[TrackingServer]:
    """``mlflow server --app-name basic-auth`` on PostgreSQL (runs and users in two
    databases), one user for the drivers made through the admin API; stopped on exit.
    ``auth_cache_ttl_s`` > 0 turns on the server's credential cache (MLflow's default is
    off: every request then pays a password hash check, docs/scale.md)."""
    from orchestrator.cli.ui import stop_server, wait_until_up

    folder = Path(tempfile.mkdtemp(prefix="orchestrate-mlflow-server-"))
    try:
        _create_databases(postgres, "mlflow", "mlflow_auth")
        admin = Credentials("admin", secrets.token_urlsafe(18))
        user = Credentials(f"researcher-{secrets.token_hex(4)}", secrets.token_urlsafe(18))
        (folder / "basic_auth.ini").write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = {postgres.uri('mlflow_auth')}\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            f"auth_cache_ttl_seconds = {auth_cache_ttl_s}\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        env.update(
            {
                "MLFLOW_BACKEND_STORE_URI": postgres.uri("mlflow"),
                "MLFLOW_AUTH_CONFIG_PATH": str(folder / "basic_auth.ini"),
                "MLFLOW_AUTH_ADMIN_PASSWORD": admin.password,  # creates the admin on first start
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "DO_NOT_TRACK": "true",
                "PYTHONUNBUFFERED": "1",
            }
        )
        port = _free_port()
        artifacts = folder / "artifacts"
        log = folder / "server.log"
        with open(log, "w") as out:
            server = subprocess.Popen(
                _server_command(port, artifacts),
                env=env,
                cwd=folder,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        base = f"http://{LOOPBACK}:{port}"
        try:
            assert wait_until_up(base, server, SERVER_START_TIMEOUT_S), _tail(log)
            status, body = _request(
                f"{base}/api/2.0/mlflow/users/create",
                admin.header(),
                {"username": user.username, "password": user.password},
            )
            assert status == 200, (status, body, _tail(log))
            yield TrackingServer(
                uri=base, port=port, pid=server.pid, user=user, admin=admin, artifacts=artifacts, postgres=postgres
            )
        finally:
            stop_server(server)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server() -> Iterator[TrackingServer]:
    # SQLAlchemy 2.1 opens postgresql:// URIs with psycopg (3), not psycopg2
    pytest.importorskip("psycopg", reason="PostgreSQL's driver is not installed: pip install 'psycopg[binary]'")
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF: pip install 'mlflow[auth]'")
    # this module's MlflowClients read as the user
    with postgres_on_loopback() as pg, tracking_server_on(pg) as server, pytest.MonkeyPatch.context() as mp:
        for name, value in server.user.environment().items():
            mp.setenv(name, value)
        yield server


@pytest.fixture(scope="module")
def drivers(tracking_server, tmp_path_factory) -> tuple[Path, list[DriverResult]]:
    """Both hypotheses run at once, each an ``orchestrate run`` against the server."""
    folder = tmp_path_factory.mktemp("tracking-server-drivers")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        **tracking_server.user.environment(),
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    processes = []
    for name in NAMES:
        spec = folder / f"{name}.yaml"
        spec.write_text(ONE_ARM.replace("name: tiny-test", f"name: {name}"))
        command = [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "run",
            str(spec),
            "--tracking-uri",
            tracking_server.uri,
            "--state-dir",
            str(folder / "state"),
            "--quiet",
        ]
        processes.append(
            subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    started = time.monotonic()
    results = []
    try:
        for name, process in zip(NAMES, processes, strict=True):
            out, err = process.communicate(timeout=RUN_TIMEOUT_S)
            results.append(DriverResult(name, process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    print(f"two concurrent runs against the server took {time.monotonic() - started:.0f} s")
    return folder, results


def _runs_of(server: TrackingServer, name: str) -> list:
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no experiment {name!r} on the server"
    return client.search_runs([experiment.experiment_id], max_results=1000)


def _by_level(runs: list) -> dict[str, list]:
    levels: dict[str, list] = {}
    for run in runs:
        levels.setdefault(run.data.tags.get("orchestrate.level", "?"), []).append(run)
    return levels


# -- the tests ----------------------------------------------------------------------------


def test_an_unauthenticated_request_is_refused(tracking_server):
    search = f"{tracking_server.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _request(search)[0] == 401
    wrong = Credentials(tracking_server.user.username, "not-the-password")
    assert _request(search, wrong.header())[0] == 401
    assert _request(f"{tracking_server.uri}/api/2.0/mlflow-artifacts/artifacts")[0] == 401
    assert _request(search, tracking_server.user.header())[0] == 200


def test_server_and_postgres_listen_on_loopback_only(tracking_server):
    import psutil

    processes = []
    for pid in (tracking_server.pid, tracking_server.postgres.pid):
        parent = psutil.Process(pid)
        processes += [parent, *parent.children(recursive=True)]
    pids = {p.pid for p in processes}
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert {c.laddr.port for c in listening} >= {tracking_server.port, tracking_server.postgres.port}
    assert {c.laddr.ip for c in listening} == {LOOPBACK}, [(c.pid, c.laddr) for c in listening]


def test_both_hypotheses_exit_zero(drivers):
    _, results = drivers
    for result in results:
        assert result.exit_code == 0, (result.name, result.stderr[-3000:])
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        # MLflow's "View run ... at" lines, printed when a run on a server ends (orchestrator/tracking.py)
        assert "View run" not in result.stdout + result.stderr, result.stdout[-3000:]


@pytest.mark.parametrize("name", NAMES)
def test_every_run_lands_exactly_once_and_finished(tracking_server, drivers, name):
    runs = _runs_of(tracking_server, name)
    levels = _by_level(runs)
    assert {level: len(found) for level, found in levels.items()} == LEVEL_COUNTS
    assert len({r.data.tags["orchestrate.trial_id"] for r in levels["trial"]}) == LEVEL_COUNTS["trial"]
    assert len({r.data.tags["orchestrate.seed"] for r in levels["confirm"]}) == LEVEL_COUNTS["confirm"]
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert all(r.data.tags.get("orchestrate.hypothesis", name) == name for r in runs)


@pytest.mark.parametrize("name", NAMES)
def test_verdicts_and_report_are_served_by_the_server(tracking_server, drivers, name, tmp_path):
    client = MlflowClient(tracking_server.uri)
    (parent,) = _by_level(_runs_of(tracking_server, name))["hypothesis"]
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:"), parent.info.artifact_uri
    verdicts = Path(client.download_artifacts(parent.info.run_id, "verdicts.json", str(tmp_path)))
    assert json.loads(verdicts.read_text()), "verdicts.json is empty"
    report = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report.md", "report.html"} <= report
    assert any(tracking_server.artifacts.rglob("verdicts.json")), "artifacts did not reach --artifacts-destination"
    folder, _ = drivers
    assert not (folder / "mlruns").exists() and not (folder / "mlartifacts").exists()


def test_judge_report_and_ui_work_from_the_server(tracking_server, drivers, tmp_path, capsys):
    from orchestrator.cli import main

    name = NAMES[0]
    assert main(["judge", name, "--tracking-uri", tracking_server.uri]) == 0
    assert "reproduces the" in capsys.readouterr().out
    assert main(["report", name, "--tracking-uri", tracking_server.uri, "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "report.html").is_file()
    capsys.readouterr()
    assert main(["ui", "--tracking-uri", tracking_server.uri, "--hypothesis", name]) == 0
    experiment = MlflowClient(tracking_server.uri).get_experiment_by_name(name).experiment_id
    runs_table = f"{tracking_server.uri}/#/experiments/{experiment}/runs?workflowType=machine_learning"
    assert capsys.readouterr().out.strip() == runs_table


def test_no_credential_in_any_param_tag_metric_or_artifact(tracking_server, drivers, tmp_path):
    client = MlflowClient(tracking_server.uri)
    credentials = tracking_server.credentials_strings()
    found = []
    for name in NAMES:
        for run in _runs_of(tracking_server, name):
            texts = [
                *run.data.params,
                *run.data.params.values(),
                *run.data.tags,
                *run.data.tags.values(),
                *run.data.metrics,
                run.info.run_name or "",
                run.info.user_id or "",
            ]
            found += [(run.info.run_name, text) for text in texts if any(c in text for c in credentials)]
            downloaded = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id)))
            for path in (p for p in downloaded.rglob("*") if p.is_file()):
                content = path.read_bytes()
                found += [(run.info.run_name, str(path)) for c in credentials if c.encode() in content]
    assert not found
    folder, results = drivers
    for result in results:  # nor in what the drivers printed
        assert not [c for c in credentials if c in result.stdout or c in result.stderr]
    written = [p for p in folder.rglob("*") if p.is_file()]  # nor in what they wrote: reports/, state
    assert not [str(p) for p in written if any(c.encode() in p.read_bytes() for c in credentials)]


def test_a_client_without_credentials_is_told_what_to_set(tracking_server, monkeypatch, capsys):
    from orchestrator.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    assert main(["judge", NAMES[0], "--tracking-uri", tracking_server.uri]) == 2
    err = capsys.readouterr().err
    assert "error code 401" in err and "MLFLOW_TRACKING_PASSWORD" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_a_reader_judges_but_is_told_to_ask_for_edit_before_writing(tracking_server, drivers, monkeypatch, capsys):
    from orchestrator.cli import main
    from orchestrator.errors import StoreError
    from orchestrator.tracking import Tracker

    reader = Credentials(f"reader-{secrets.token_hex(4)}", secrets.token_urlsafe(18))
    status, body = _request(
        f"{tracking_server.uri}/api/2.0/mlflow/users/create",
        tracking_server.admin.header(),
        {"username": reader.username, "password": reader.password},
    )
    assert status == 200, body
    for name, value in reader.environment().items():
        monkeypatch.setenv(name, value)
    assert main(["judge", NAMES[0], "--tracking-uri", tracking_server.uri]) == 0  # reading needs READ only
    assert "reproduces the" in capsys.readouterr().out
    (parent,) = _by_level(_runs_of(tracking_server, NAMES[0]))["hypothesis"]
    with pytest.raises(StoreError, match=r"error code 403.*EDIT"):
        Tracker(tracking_server.uri).set_tags(parent.info.run_id, {"note": "mine"})
    # ``report`` writes the report locally, then logs it to the run, which a reader may not:
    # one line naming what it did write
    out = drivers[0] / "reader-report"
    capsys.readouterr()
    assert main(["report", NAMES[0], "--tracking-uri", tracking_server.uri, "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "error code 403" in line and line.endswith(f"the report itself was written to {out / 'report.md'}"), line
    assert (out / "report.md").exists()
