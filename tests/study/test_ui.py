"""`nctune ui`: bad input, the links it prints, and a real MLflow server it starts and stops.

The store here is written with study.run.tracking's own functions (no Ray), so the server test costs
only the server's start; tests/study/test_ui_browser.py runs a real study and a real browser.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from study.cli import main
from study.commands.ui import HOST, Target, interruptible, links, port_free
from study.run.tracking import ensure_experiment, flat_params, log_study_start, run_name

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240.0  # the server's cold start on a loaded CI machine, with slack


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def write_store(root: Path, name: str = "uistudy") -> dict:
    """A study as `nctune run` leaves it: study.json, a parent run with artifacts, 3 trials."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = ensure_experiment(client, "nctune", root / "artifacts")
    parent = log_study_start(client, exp_id, name, "What weight decay does to collapse.",
                             {"nctune.searched": "weight_decay"}, {"num_samples": 3},
                             {"config.yaml": "name: uistudy\n"})
    children = []
    for i, wd in enumerate([1e-4, 3e-4, 1e-3], start=1):
        config = {"weight_decay": wd, "epochs": 2}
        run = client.create_run(exp_id, run_name=run_name(i, config, ["weight_decay"]),
                                tags={"mlflow.parentRunId": parent, "nctune.study": name,
                                      "nctune.role": "trial"})
        metrics = [Metric("cdnv/target", 3.0 - step * wd * 100, 0, step) for step in (1, 2)]
        client.log_batch(run.info.run_id, metrics=metrics, params=flat_params(config))
        client.set_terminated(run.info.run_id)
        children.append(run.info.run_id)
    client.set_terminated(parent)
    folder = root / "studies" / name
    folder.mkdir(parents=True)
    state = {"name": name, "status": "completed", "tracking_uri": uri, "experiment": "nctune",
             "experiment_id": exp_id, "parent_run_id": parent}
    (folder / "study.json").write_text(json.dumps(state))
    return {**state, "children": children}


@dataclass
class UIProcess:
    """`nctune ui` running in a child process, its stdout read line by line."""

    proc: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str | None, timeout: float = START_TIMEOUT_S) -> str:
        """Read lines up to the first holding `text` (None: to the end of the output)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if text is not None and text in line:
                return line
        if text is None:
            return ""
        raise AssertionError(f"`nctune ui` never printed {text!r}; output:\n" +
                             "\n".join(self.lines))

    def url(self, label: str) -> str:
        """The URL printed after `label:`."""
        for line in self.lines:
            if line.strip().startswith(label):
                return line.split(": ", 1)[1].strip()
        raise AssertionError(f"no {label!r} line in:\n" + "\n".join(self.lines))

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C, as a terminal sends it; the exit status."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=timeout)
        self.wait_for(None, timeout=30)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_ui(*args: str, env: dict[str, str] | None = None) -> UIProcess:
    proc = subprocess.Popen([sys.executable, "-m", "study.cli", "ui", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    return UIProcess(proc)


def hash_query(url: str) -> dict[str, list[str]]:
    """The query of a hash route: `http://h/#/path?a=1` -> {'a': ['1']}."""
    return urllib.parse.parse_qs(urllib.parse.urlsplit(url).fragment.partition("?")[2])


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ui")
    return {**write_store(root), "root": root}


# ---- bad input: one clear line, exit 2, nothing started --------------------------------------
def test_an_unknown_study_names_the_known_ones(store, capsys):
    assert main(["ui", "nosuch", "--root", str(store["root"])]) == 2
    err = capsys.readouterr().err
    assert "no study 'nosuch'" in err and "known: uistudy" in err


def test_a_missing_store_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["ui", "--root", str(tmp_path / "empty")]) == 2
    assert "no MLflow database" in capsys.readouterr().err


def test_a_busy_or_impossible_port_is_refused(store, capsys):
    root = str(store["root"])
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["ui", "uistudy", "--root", root, "--port", str(port)]) == 2
    assert f"--port: {port} is in use" in capsys.readouterr().err
    assert main(["ui", "uistudy", "--root", root, "--port", "70000"]) == 2
    assert "not a port number" in capsys.readouterr().err


def test_links_open_the_training_runs_view_of_the_study():
    target = Target("sqlite:////x.db", "nctune", "demo", "7", "abc123")
    got = dict(links("http://127.0.0.1:5000", target, "7"))
    runs = "http://127.0.0.1:5000/#/experiments/7/runs"
    assert got["experiment 'nctune'"] == f"{runs}?workflowType=machine_learning"
    assert hash_query(got["study 'demo' runs"]) == {"workflowType": ["machine_learning"],
                     "searchFilter": ["tags.`nctune.study` = 'demo'"]}
    assert got["parent run (description, report, figures)"] == (
        f"{runs}/abc123?workflowType=machine_learning")
    # No experiment yet: the list of experiments.
    assert links("http://h:1", Target("u", "nctune"), None) == [
        ("experiments", "http://h:1/#/experiments?workflowType=machine_learning")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_ctrl_c_kill_and_hangup_all_reach_the_shutdown_path(sig):
    before = signal.getsignal(sig)
    with pytest.raises(KeyboardInterrupt), interruptible():
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the handler raises at once; this only bounds a failure
    assert signal.getsignal(sig) == before


# ---- a real server --------------------------------------------------------------------------
@pytest.mark.slow
def test_serves_the_study_with_its_artifacts_and_stops_on_ctrl_c(store, tmp_path):
    study = store
    port = free_port()
    ui = start_ui("uistudy", "--root", str(store["root"]), "--port", str(port))
    try:
        ui.wait_for("Ctrl-C")
        base = f"http://{HOST}:{port}"
        exp = study["experiment_id"]
        assert ui.url("experiment 'nctune'") == (
            f"{base}/#/experiments/{exp}/runs?workflowType=machine_learning")
        assert ui.url("parent run").startswith(f"{base}/#/experiments/{exp}/runs/"
                                               f"{study['parent_run_id']}?")
        with urllib.request.urlopen(f"{base}/health", timeout=10) as r:
            assert r.status == 200
        # The study's runs, as the printed filter selects them.
        query = hash_query(ui.url("study 'uistudy'"))
        body = json.dumps({"experiment_ids": [exp], "filter": query["searchFilter"][0]}).encode()
        req = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            runs = json.load(r)["runs"]
        assert {r["info"]["run_id"] for r in runs} == {study["parent_run_id"],
                                                       *study["children"]}
        # The parent run's artifacts are served (the UI's Artifacts tab reads these routes).
        parent = study["parent_run_id"]
        listed = get_json(f"{base}/ajax-api/2.0/mlflow/artifacts/list?run_uuid={parent}")
        assert [f["path"] for f in listed["files"]] == ["config.yaml"]
        with urllib.request.urlopen(
                f"{base}/get-artifact?path=config.yaml&run_uuid={parent}", timeout=30) as r:
            assert r.read() == b"name: uistudy\n"
        # Against a tracking server, `nctune ui` only prints that server's links.
        other = subprocess.run([sys.executable, "-m", "study.cli", "ui", "--root",
                                str(tmp_path / "none")], cwd=REPO, capture_output=True,
                               text=True, timeout=120, env={**os.environ,
                                                            "MLFLOW_TRACKING_URI": base})
        assert other.returncode == 0, other.stderr
        assert f"{base}/#/experiments/{exp}/runs?workflowType=machine_learning" in other.stdout
        assert ui.interrupt() == 0
    finally:
        ui.kill()
    assert "Stopped." in ui.lines
    assert port_free(port), "the server still holds the port after Ctrl-C"
