"""A real multi-node Ray cluster: two test hosts in network namespaces of our own.

Each host is a network namespace joined by one veth pair on 10.213.0.0/24 (addresses
that exist only inside these namespaces; no route leads anywhere else). The head
(10.213.0.1) and a worker (10.213.0.2) each run `ray start` with token authentication
(RAY_AUTH_MODE=token and one fresh RAY_AUTH_TOKEN shared by every node and the driver)
and one logical GPU. `orchestrate run --address 10.213.0.1:6379` then runs the tiny
hypothesis from inside the head's namespace with `resources_per_trial: {cpu: 1, gpu: 1}`:
each trial holds a GPU (CUDA_VISIBLE_DEVICES is set, torch has no CUDA here, so it
trains on CPU), so two concurrent trials must land on two different nodes. The
tokenised dataset reaches the worker through Ray's object store; `--storage-path` is a
folder both hosts see (they share this machine's filesystem, as a shared FS would).

Teardown never uses `ray stop` (it kills every Ray process on the machine, other
people's included): it kills exactly the processes inside our namespaces
(`ip netns pids`), then deletes the namespaces (which deletes the veth pair).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from helpers import TINY_HYPOTHESIS, new_mlflow_store

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SUBNET = "10.213.0"
HEAD_IP, WORKER_IP = f"{SUBNET}.1", f"{SUBNET}.2"
GCS_PORT = 6379
LOOPBACK_FLAG = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _sh(*args: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} -> {out.returncode}: {out.stderr.strip() or out.stdout.strip()}")
    return out


class Hosts:
    """Two network namespaces joined by a veth pair; torn down completely by close()."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.head, self.worker = f"o9h-{tag}", f"o9w-{tag}"
        self.links = (f"o9h{tag}", f"o9w{tag}")  # interface names <= 15 characters
        self.created: list[str] = []

    def up(self) -> None:
        for ns in (self.head, self.worker):
            _sh("ip", "netns", "add", ns)
            self.created.append(ns)
        a, b = self.links
        # the pair is born inside the namespaces: the machine's own namespace never sees it
        _sh("ip", "link", "add", a, "netns", self.head, "type", "veth", "peer", "name", b, "netns", self.worker)
        for ns, link, ip in ((self.head, a, HEAD_IP), (self.worker, b, WORKER_IP)):
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", link)
            _sh("ip", "-n", ns, "link", "set", link, "up")

    def env(self, token: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
        env.pop(LOOPBACK_FLAG, None)  # cluster mode: listeners on the namespace's address, extra nodes allowed
        env.update(
            {
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": token,
                "RAY_USAGE_STATS_ENABLED": "0",
                "HF_HUB_OFFLINE": "1",
                "OMP_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
        )  # Ray reads RAY_AUTH_TOKEN before RAY_AUTH_TOKEN_PATH and ~/.ray/auth_token
        return env

    def run_in(self, ns: str, command: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
        return _sh("ip", "netns", "exec", ns, *command, env=env, **kw)

    def pids(self, ns: str) -> list[int]:
        out = _sh("ip", "netns", "pids", ns, check=False)
        return [int(p) for p in out.stdout.split()]

    def close(self) -> list[str]:
        """Kill every process in our namespaces (TERM, then KILL), delete the namespaces."""
        problems = []
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            pids = [p for ns in self.created for p in self.pids(ns)]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(self.pids(ns) for ns in self.created):
                time.sleep(0.5)
        for ns in self.created:
            left = self.pids(ns)
            if left:
                problems.append(f"{ns}: processes left {left}")
            out = _sh("ip", "netns", "del", ns, check=False)
            if out.returncode != 0:
                problems.append(f"ip netns del {ns}: {out.stderr.strip()}")
        self.created.clear()
        return problems


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head + worker Ray nodes in two namespaces; yields (hosts, env, folder)."""
    if not sys.platform.startswith("linux") or shutil.which("ip") is None:
        pytest.skip("needs Linux network namespaces (iproute2's `ip`)")
    folder = tmp_path_factory.mktemp("cluster")
    hosts = Hosts()
    try:
        hosts.up()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        problems = hosts.close()
        pytest.skip(f"cannot create network namespaces here: {exc}" + (f" (cleanup: {problems})" if problems else ""))
    ray_tmp = Path(tempfile.mkdtemp(prefix="o9-", dir="/tmp"))  # short: Ray's unix socket paths must stay < 108 bytes
    token = secrets.token_hex(32)  # the same token on every node and the driver
    env = hosts.env(token)
    ray = str(Path(sys.executable).with_name("ray"))
    common = ["--num-cpus", "1", "--num-gpus", "1", "--object-store-memory", str(150 * 2**20), "--disable-usage-stats"]
    started = time.monotonic()
    try:
        hosts.run_in(
            hosts.head,
            [
                ray,
                "start",
                "--head",
                "--node-ip-address",
                HEAD_IP,
                "--port",
                str(GCS_PORT),
                "--include-dashboard",
                "false",
                "--temp-dir",
                str(ray_tmp / "h"),
                *common,
            ],
            env,
            timeout=240,
        )
        hosts.run_in(
            hosts.worker,
            [
                ray,
                "start",
                "--address",
                f"{HEAD_IP}:{GCS_PORT}",
                "--node-ip-address",
                WORKER_IP,
                "--temp-dir",
                str(ray_tmp / "w"),
                *common,
            ],
            env,
            timeout=240,
        )
        print(f"cluster up in {time.monotonic() - started:.0f} s")
        yield hosts, env, folder
    finally:
        problems = hosts.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        assert not problems, problems


def _cluster_query(hosts: Hosts, env: dict[str, str], folder: Path) -> dict:
    """Ask the GCS (from the head's namespace, with the token) for nodes and actors."""
    script = textwrap.dedent(f"""
        import json, logging, ray
        import ray._private.state as state
        ray.init(address="{HEAD_IP}:{GCS_PORT}", logging_level=logging.ERROR, log_to_driver=False)
        nodes = [
            {{"ip": n["NodeManagerAddress"], "alive": n["Alive"], "resources": n["Resources"]}} for n in ray.nodes()
        ]
        actors = [
            {{"cls": a["ActorClassName"], "ip": a["Address"]["IPAddress"], "state": a["State"]}}
            for a in state.actors().values()
        ]
        print("JSON" + json.dumps({{"nodes": nodes, "actors": actors}}))
    """)
    out = hosts.run_in(hosts.head, [sys.executable, "-c", script], env, timeout=180, cwd=folder)
    return json.loads(next(line[4:] for line in out.stdout.splitlines() if line.startswith("JSON")))


@pytest.fixture(scope="module")
def cluster_run(cluster):
    hosts, env, folder = cluster
    before = _cluster_query(hosts, env, folder)
    spec = folder / "tiny.yaml"
    # two trials at a time, one GPU each: one per node (the tiny hypothesis runs one at a time)
    spec.write_text(
        TINY_HYPOTHESIS.replace(
            "  scheduler: fifo\n", "  scheduler: fifo\n  resources_per_trial: {cpu: 1, gpu: 1}\n"
        ).replace("max_concurrent: 1", "max_concurrent: 2")
    )
    uri = new_mlflow_store(folder)  # on the driver: only the driver writes to MLflow
    storage = folder / "ray-storage"  # one folder both hosts see, as a shared filesystem would be
    started = time.monotonic()
    out = hosts.run_in(
        hosts.head,
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "run",
            str(spec),
            "--address",
            f"{HEAD_IP}:{GCS_PORT}",
            "--tracking-uri",
            uri,
            "--storage-path",
            str(storage),
            "--state-dir",
            str(folder / "state"),
            "--quiet",
        ],
        env,
        check=False,
        timeout=900,
        cwd=folder,
    )
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    print(f"orchestrate run on the cluster: {elapsed:.0f} s")
    after = _cluster_query(hosts, env, folder)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny-test")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return before, after, runs, storage, out


def test_two_nodes_joined_with_token_auth_and_logical_gpus(cluster_run):
    before, _, _, _, _ = cluster_run
    alive = [n for n in before["nodes"] if n["alive"]]
    assert sorted(n["ip"] for n in alive) == [HEAD_IP, WORKER_IP]
    assert all(n["resources"].get("GPU") == 1 and n["resources"].get("CPU") == 1 for n in alive)


def test_trials_ran_on_both_nodes(cluster_run):
    _, after, runs, _, _ = cluster_run
    # Ray Tune runs each function trainable in an actor of class ImplicitFunc; the GCS
    # remembers where every actor lived, dead ones included. Its name comes back bare or
    # qualified ("wrap_function.<locals>.ImplicitFunc"; seen both with Ray 2.60).
    trial_actors = [a for a in after["actors"] if a["cls"].rpartition(".")[2] == "ImplicitFunc"]
    per_node = {ip: sum(a["ip"] == ip for a in trial_actors) for ip in (HEAD_IP, WORKER_IP)}
    trial_runs = [r for r in runs if r.data.tags.get("orchestrate.level") == "trial"]
    print(f"trainable actors per node: {per_node}; trial runs in MLflow: {len(trial_runs)}")
    assert all(per_node.values()), after["actors"]


def test_every_trial_and_confirmation_is_in_mlflow(cluster_run):
    _, _, runs, storage, _ = cluster_run
    by_level = {}
    for run in runs:
        by_level.setdefault(run.data.tags.get("orchestrate.level"), []).append(run)
    assert len(by_level["hypothesis"]) == 1 and len(by_level["arm"]) == 2
    assert len(by_level["trial"]) == 4 and len(by_level["confirm"]) == 4  # 2 arms x (2 trials, 2 seeds)
    for run in by_level["trial"] + by_level["confirm"]:
        assert run.info.status == "FINISHED", (run.info.run_name, run.data.tags.get("orchestrate.error"))
        assert "val_accuracy" in run.data.metrics
    assert all("test_accuracy" in r.data.metrics for r in by_level["confirm"])
    (parent,) = by_level["hypothesis"]
    assert parent.info.status == "FINISHED" and parent.data.tags["verdict.0"].startswith("SUPPORTED")
    # Ray Tune kept its experiment state in the shared --storage-path
    assert any(storage.rglob("experiment_state-*.json")) or any(storage.rglob("tuner.pkl"))


def test_mlflow_runs_say_which_node_ran_them(cluster_run):
    _, _, runs, _, _ = cluster_run
    assert {
        r.data.tags.get("orchestrate.node_ip")
        for r in runs
        if r.data.tags.get("orchestrate.level") in ("trial", "confirm")
    } == {HEAD_IP, WORKER_IP}
