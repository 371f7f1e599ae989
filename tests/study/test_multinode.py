"""A study on a two-node Ray cluster on this machine, joined with `nctune run --address`.

The cluster is what a user starts by hand: `ray start --head` and `ray start --address` on
127.0.0.1, each node with its own custom resource (`node_a`, `node_b`) and one CPU, dashboard off,
token authentication on. What Ray 2.60 does (ray/_private/authentication/
authentication_token_setup.py, worker.py, scripts/scripts.py): `ray start --head` turns token mode
on when RAY_AUTH_MODE=token, or when it is unset and a token exists (RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); a client that joins with an explicit address
(`ray.init(address=...)`, `ray status --address`) never turns it on by itself, so it must have
RAY_AUTH_MODE=token and the cluster's token, or it is refused with an AuthenticationError. The
nodes and the driver here all get RAY_AUTH_MODE=token and the test's own RAY_AUTH_TOKEN (never
~/.ray/auth_token, which other clusters on this machine may use).

Other developers run Ray on this machine at the same time: everything here uses its own free
ports and its own `--temp-dir`, and stops only the processes it started (`ray start --block` in
its own session stops its node's processes on SIGTERM); never `ray stop`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.study.studies import TINY

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
STARTED = "Ray runtime started"
# Ports each node would otherwise take at fixed defaults (and share with other Ray instances).
NODE_PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
                   "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                   "--runtime-env-agent-port")


def free_ports(count: int) -> list[int]:
    """Ports free right now on 127.0.0.1 (held together, so they are distinct)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class TwoNodeCluster:
    """`ray start --head` (CPU 1, node_a 1) and `ray start --address` (CPU 1, node_b 1)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        # Short: Ray's Unix socket paths live under it and must stay under ~107 bytes.
        self.temp = tempfile.mkdtemp(prefix="nct-", dir="/tmp")
        ports = free_ports(2 + 2 * len(NODE_PORT_FLAGS))
        self.gcs_port, self.dashboard_port = ports[:2]
        self.node_ports = [ports[2:2 + len(NODE_PORT_FLAGS)], ports[2 + len(NODE_PORT_FLAGS):]]
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.nodes: dict[str, subprocess.Popen] = {}
        self.nodes_seen: dict[str, set[str]] = {}
        self.stragglers: list[int] = []  # pids alive after the graceful stop

    def __enter__(self) -> TwoNodeCluster:
        try:
            self.start("head", ["--head", f"--port={self.gcs_port}", "--include-dashboard=false",
                                f"--dashboard-port={self.dashboard_port}"], {"node_a": 1})
            self.start("worker", [f"--address={self.address}"], {"node_b": 1})
            self.nodes_seen = self.wait_for_nodes(2)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self, name: str) -> Path:
        return Path(self.temp) / f"{name}.log"

    def start(self, name: str, args: list[str], resources: dict[str, int]) -> None:
        ports = self.node_ports[len(self.nodes)]
        cmd = [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1",
               "--num-cpus=1", "--num-gpus=0", f"--resources={json.dumps(resources)}",
               "--object-store-memory=100000000", f"--temp-dir={self.temp}",
               *(f"{flag}={port}" for flag, port in zip(NODE_PORT_FLAGS, ports, strict=True)),
               *args]
        with self.log(name).open("w") as out:
            # Own session: the node's processes are ours alone to signal.
            self.nodes[name] = subprocess.Popen(cmd, env=self.env, stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while STARTED not in self.log(name).read_text():
            if self.nodes[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({name}) failed:\n{self.log(name).read_text()}")
            time.sleep(0.2)

    def status(self, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ray"), "status", "-v", f"--address={self.address}"],
                              env=env or self.env, capture_output=True, text=True, timeout=60)

    def node_resources(self) -> dict[str, set[str]]:
        """Node id -> the custom resources it holds, from `ray status -v`'s per-node usage."""
        out = self.status()
        assert out.returncode == 0, out.stderr
        nodes = {}
        for section in out.stdout.split("\nNode: ")[1:]:
            node_id = section.split()[0]
            nodes[node_id] = set(re.findall(r"/\d+\.\d+ (node_[ab])\b", section))
        return nodes

    def wait_for_nodes(self, count: int) -> dict[str, set[str]]:
        """`node_resources()` once `count` nodes show; `ray status` reads the autoscaler's view,
        which lags node registration by seconds."""
        deadline = time.monotonic() + 60
        while len(nodes := self.node_resources()) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {nodes} joined:\n{self.status().stdout}")
            time.sleep(1)
        return nodes

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: all of them name the cluster's temp dir."""
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if self.temp in " ".join(proc.info["cmdline"] or []) and proc.is_running():
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def stop(self) -> None:
        """SIGTERM each `ray start --block` (it stops its node's processes); whatever of ours
        outlives that is recorded in `stragglers` and killed."""
        for proc in reversed(self.nodes.values()):  # worker first
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.nodes.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.stragglers.append(proc.pid)
        time.sleep(1)  # children exit right after their parent
        leftovers = self.processes()
        self.stragglers += [p.pid for p in leftovers]
        for proc in self.nodes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # our own session (start_new_session)
        for proc in leftovers:
            proc.kill()
        psutil.wait_procs(leftovers, timeout=10)

    def cleanup(self) -> None:
        shutil.rmtree(self.temp, ignore_errors=True)


def has_token_auth() -> bool:
    return importlib.util.find_spec("ray._private.authentication") is not None


def cluster_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI")}
    # No usage-stats reporting from a test. No idle worker prestarted for the driver on the node
    # it attaches to (the head): that head start let the head's trial actor come up seconds
    # before the other node's (see study_file).
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               RAY_prestart_worker_first_driver="0")
    return env


def study_file(folder: Path) -> Path:
    """Four trials, two at a time, one CPU each: one per node at any moment.

    Trial workers are not reused (search.reuse_actors false): with reuse, Tune hands a finished
    trial's worker to a pending trial even while that trial's own worker is starting on the
    other node, so short trials could all run on whichever node came up first. Without it each
    trial gets its own worker, and two concurrent 1-CPU trials can only fit one per node.
    """
    tiny: dict[str, Any] = TINY
    data = {**tiny, "name": "twonodes", "storage": {"root": str(folder / "runs")},
            "dataset": {**tiny["dataset"], "num_source_classes": 16, "source_train_per_class": 30},
            "training": {**tiny["training"], "device": "cpu", "epochs": 2},
            "search": {**tiny["search"], "num_samples": 4, "max_concurrent": 2,
                       "reuse_actors": False},
            "resources": {"cpus_per_trial": 1}}
    path = folder / "twonodes.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def trial_results(ray_dir: Path) -> dict[str, list[dict]]:
    """Trial folder name -> every result the trial reported (result.json, one JSON per line)."""
    return {p.parent.name: [json.loads(line) for line in p.read_text().splitlines() if line]
            for p in sorted(ray_dir.glob("t*/result.json"))}


def test_study_places_trials_on_both_nodes_and_logs_from_the_driver(tmp_path):
    token = os.urandom(32).hex()  # the format `ray get-auth-token --generate` writes
    cluster = TwoNodeCluster(cluster_env(token))
    try:
        with cluster:
            nodes = cluster.nodes_seen
            assert sorted(map(tuple, nodes.values())) == [("node_a",), ("node_b",)], nodes
            if has_token_auth():  # a Ray with token auth: the token is really checked
                no_token = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
                refused = cluster.status(no_token)
                assert refused.returncode != 0 and "AuthenticationError" in refused.stderr

            driver = subprocess.run(
                [str(BIN / "nctune"), "run", str(study_file(tmp_path)), "--address",
                 cluster.address, "--no-report"],
                env=cluster.env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
            assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-3000:]
            assert len(cluster.processes()) >= 4  # gcs, 2 raylets, ...: what stop() must end
    finally:
        survivors = cluster.processes()
        cluster.cleanup()
    # Everything ended by the graceful stop alone, and nothing of ours is left.
    assert cluster.stragglers == [] and survivors == [], (cluster.stragglers, survivors)

    # Placement: every result names its node; the four trials used both nodes and only them.
    results = trial_results(tmp_path / "runs" / "ray" / "twonodes")
    assert len(results) == 4, sorted(results)
    placement = {}
    for trial, reports in results.items():
        assert [r["epoch"] for r in reports] == [1, 2], trial
        ids = {r["node_id"] for r in reports}
        assert len(ids) == 1, (trial, ids)  # no failure moved it
        placement[trial] = nodes[ids.pop()]
    print(f"trial placement: {placement}")
    assert set().union(*placement.values()) == {"node_a", "node_b"}, placement

    # MLflow from the driver: the parent run and one finished child per trial, with metrics
    # at every epoch, and the string node id kept out of the metrics.
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("nctune")
    assert exp is not None
    parent = client.search_runs([exp.experiment_id], "tags.`nctune.study` = 'twonodes' and "
                                "tags.`nctune.role` = 'study'")
    assert len(parent) == 1 and parent[0].data.tags["nctune.status"] == "completed"
    children = client.search_runs([exp.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent[0].info.run_id}'")
    assert len(children) == 4
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["nctune.status"] == "completed"
        assert "node_id" not in run.data.metrics
        history = client.get_metric_history(run.info.run_id, "fewshot/5w1s/ncc/acc")
        assert sorted(m.step for m in history) == [1, 2]
