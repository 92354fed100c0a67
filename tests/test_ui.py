"""`orchestrate ui` without a browser: what it runs, and what it refuses (fast).

The real server + Chromium check is tests/test_ui_browser.py (slow)."""

from __future__ import annotations

import argparse
import socket

from helpers import new_mlflow_store
from orchestrator.cli import ui


def _args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    ui.add_ui_command(parser.add_subparsers(dest="command"))
    argv = ["ui"]
    for key, value in kw.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return parser.parse_args(argv)


def test_the_server_listens_on_loopback_only_with_one_worker():
    command = ui.server_command("sqlite:////tmp/x/mlflow.db", 5123)
    assert command[1:4] == ["-m", "mlflow", "server"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5123"
    assert command[command.index("--backend-store-uri") + 1] == "sqlite:////tmp/x/mlflow.db"
    assert command[command.index("--workers") + 1] == "1"
    assert "--disable-security-middleware" not in command and "0.0.0.0" not in command


def test_the_url_opens_the_runs_table_of_the_experiment():
    assert (
        ui.experiment_url("http://127.0.0.1:5000", "7")
        == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    )
    assert ui.experiment_url("http://127.0.0.1:5000", None) == "http://127.0.0.1:5000/#/experiments"


def test_parser_defaults_and_func():
    args = _args()
    assert args.port == ui.DEFAULT_PORT and args.func is ui.cmd_ui and args.tracking_uri is None


def test_a_missing_sqlite_store_is_reported_and_nothing_starts(tmp_path, capsys):
    code = ui.cmd_ui(_args(tracking_uri=f"sqlite:///{tmp_path}/none.db"))
    assert code == 1
    assert "no MLflow store" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()  # never created by looking


def test_a_busy_port_is_reported(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = new_mlflow_store(tmp_path)
    MlflowClient(uri).create_experiment("h")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code = ui.cmd_ui(_args(tracking_uri=uri, port=busy.getsockname()[1], hypothesis="h"))
    assert code == 1
    assert "in use" in capsys.readouterr().err


def test_a_tracking_server_uri_only_prints_its_url(capsys):
    assert ui.cmd_ui(_args(tracking_uri="http://127.0.0.1:5999/")) == 0
    assert capsys.readouterr().out.strip() == "http://127.0.0.1:5999/#/experiments"


def test_a_hypothesis_file_names_its_experiment():
    assert ui._hypothesis_name("hypotheses/radlora.yaml") == "radlora-quarter-flops"
    assert ui._hypothesis_name("radlora-quarter-flops") == "radlora-quarter-flops"


def test_a_busy_port_is_reported_after_the_experiment_of_a_hypothesis_file_is_found(tmp_path, capsys):
    from orchestrator.tracking import Tracker

    uri = new_mlflow_store(tmp_path)
    Tracker(uri).experiment_id("radlora-quarter-flops")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code = ui.cmd_ui(_args(tracking_uri=uri, port=busy.getsockname()[1], hypothesis="hypotheses/radlora.yaml"))
    err = capsys.readouterr().err
    assert code == 1 and "in use" in err and "no experiment" not in err
