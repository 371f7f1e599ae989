"""The tracking store failing: unreachable at start (one clear line, nothing started), a blink
mid-study (retried with back-off, nothing lost), and an outage past the retry budget (the study
stops cleanly, and `nctune resume` finishes it once the store is back).

The store is a real `mlflow server` on 127.0.0.1; the outages are real refused and reset
connections, made by a TCP forwarder between the driver and the server that this test can close
and reopen in a moment (restarting the server itself takes ~10 s, longer than a blink).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.cli import main
from study.run.driver import run_study
from study.run.preflight import check_new_study
from study.run.progress import header
from study.run.state import start_study
from tests.study.reliability import audit, kill_study, live_results, study_runs, this_session

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Forwarder:
    """127.0.0.1:port -> 127.0.0.1:target, byte for byte; `down()` refuses and drops all."""

    def __init__(self, target: int) -> None:
        self.target, self.port = target, free_port()
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and reset open ones. shutdown() first: close() alone leaves a
        socket alive while another thread is blocked in accept() or recv() on it."""
        with self.lock:
            socks = [*([self.listener] if self.listener else []), *self.conns]
            self.listener = None
            self.conns.clear()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    port = free_port()
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((folder / "server.log").read_text()) from None
            time.sleep(0.3)
    yield port
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_unreachable_store_is_one_clear_error_before_anything_starts(tmp_path, capsys):
    _, yaml_file = kill_study(tmp_path, "nostore")
    uri = f"http://alice:s3cret@127.0.0.1:{free_port()}"
    code = main(["run", str(yaml_file), "--set", f"tracking.uri={uri}", "--no-report"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("nctune: error: tracking URI") and len(err.strip().splitlines()) == 1
    assert "s3cret" not in err and "alice" not in err
    assert not (tmp_path / "studies").exists() and not (tmp_path / "ray").exists()


def test_credentials_in_the_uri_work_and_are_never_printed_or_logged(tmp_path, mlflow_server):
    """A URI with user:password@ (MLflow sends it as basic auth; this server ignores it)."""
    uri = f"http://alice:s3cret@127.0.0.1:{mlflow_server}"
    cfg, _ = kill_study(tmp_path, "creds", tracking={"uri": uri})
    ready = check_new_study(cfg, None)  # the tracking check passes with credentials
    data = ready.data
    state, _ = start_study(ready.cfg, data.manifest, ready.bank_hashes)
    client = MlflowClient(uri)
    logged = Path(client.download_artifacts(state.parent_run_id, "config.yaml", str(tmp_path)))
    assert "s3cret" not in logged.read_text() and "uri: http://***@127.0.0.1" in logged.read_text()
    text = header(cfg, data.manifest, tmp_path, state)
    assert "s3cret" not in text and "alice" not in text and "***@127.0.0.1" in text


def test_store_blink_is_retried_and_an_outage_stops_the_study_resumably(
        tmp_path, local_ray, mlflow_server, monkeypatch, capsys):
    monkeypatch.setenv("NCTUNE_TRACKING_RETRY_S", "4")  # 0.5 + 1 + 2 + 0.5 s of back-off
    proxy = Forwarder(mlflow_server)
    proxy.up()
    uri = f"http://127.0.0.1:{proxy.port}"
    cfg, _ = kill_study(tmp_path, "outage", tracking={"uri": uri})
    events: list[str] = []

    def reported() -> int:
        return len(live_results(this_session(), "outage"))

    def outages() -> None:
        deadline = time.monotonic() + 300
        while reported() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        proxy.down()  # a blink: 2 s, inside the 4 s budget
        time.sleep(2)
        proxy.up()
        events.append("blink")
        while reported() < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
        proxy.down()  # an outage: stays down past the budget, until the study has stopped
        events.append("outage")

    thread = threading.Thread(target=outages, daemon=True)
    thread.start()
    state = run_study(cfg, report=False)
    thread.join(timeout=60)
    out = capsys.readouterr().out
    assert events == ["blink", "outage"]
    assert (state.status, state.stop_reason) == ("stopped", "tracking"), out
    assert out.rstrip().splitlines()[-1].strip() == f"nctune resume outage --root {tmp_path}"
    saved = json.loads((tmp_path / "studies" / "outage" / "study.json").read_text())
    assert (saved["status"], saved["stop_reason"]) == ("stopped", "tracking")

    proxy.up()  # the store is back
    assert main(["resume", "outage", "--root", str(tmp_path), "--no-report"]) == 0
    got = audit(cfg, uri)
    print(json.dumps({"scenario": "tracking blink + outage", **got}))
    assert got["trials_completed"] == got["child_runs"] == cfg.num_samples
    assert got["duplicated_steps"] == got["missing_steps"] == got["runs_running"] == 0
    assert got["parent"] == ("FINISHED", "completed")
    assert len(set(got["configs"])) == cfg.num_samples
    _, runs = study_runs(uri, "outage")
    assert all(r.info.status == "FINISHED" for r in runs)
    proxy.down()
    assert Path(tmp_path / "studies" / "outage" / "study.json").exists()
