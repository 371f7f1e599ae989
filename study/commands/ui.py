"""`nctune ui [NAME]`: the MLflow UI on a study's tracking store, on 127.0.0.1, until Ctrl-C.

It runs `mlflow server` as a child process (its own session, so a terminal's Ctrl-C reaches only
this command, which then stops the server in order), waits until the server answers, and prints
links that open the training-runs view straight away.

Why the links carry `?workflowType=machine_learning`: MLflow 3.17's UI picks the experiment page
(GenAI traces or the runs table) from that URL parameter, else from the browser's saved choice,
else GenAI; the experiment tag `mlflow.experimentKind` that study.run.tracking sets is not consulted
in this version. A study's own runs are one `searchFilter` on the tag `nctune.study` away, since
every study shares the experiment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from analysis.crosstrial import store
from analysis.crosstrial.store import DEFAULT_ROOT
from analysis.errors import InputError

HOST = "127.0.0.1"
DEFAULT_PORT = 5000
# Cold start on a busy 2-core machine measured ~20 s (uvicorn + the FastAPI app); allow slack.
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
ML_VIEW = {"workflowType": "machine_learning"}
# Stores `mlflow server` can serve; http(s) stores are a server already.
SERVABLE_SCHEMES = ("sqlite", "file", "postgresql", "mysql", "mssql")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `nctune ui` to the CLI."""
    p = sub.add_parser(
        "ui", help="open a study in the MLflow UI (on 127.0.0.1; Ctrl-C stops it)",
        description="Start the MLflow UI on a study's tracking store, bound to 127.0.0.1, and "
        "print links to the study's runs and its parent run. Ctrl-C stops the server.")
    p.add_argument("name", nargs="?", help="study name (default: the whole store under --root)")
    p.add_argument("--port", type=int, default=None,
                   help=f"port to serve on (default: {DEFAULT_PORT} if free, else any free port)")
    p.add_argument("--root", default=DEFAULT_ROOT, help="storage root (default: nctune-runs)")
    p.set_defaults(func=cmd_ui)


@dataclass(frozen=True)
class Target:
    """What to open: a tracking store and, for a study, its experiment and parent run."""

    tracking_uri: str
    experiment: str
    study: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None


def find_target(name: str | None, root: str) -> Target:
    """The study's store from studies/NAME/study.json, or the default store under `root`."""
    from analysis.crosstrial.store import resolve_tracking_uri
    from study.run.state import STATE_FILE, study_folder

    if name is None:
        return Target(resolve_tracking_uri(None, root), "nctune")
    state = json.loads((study_folder(name, root) / STATE_FILE).read_text())
    return Target(state["tracking_uri"], state["experiment"], name,
                  str(state["experiment_id"]), state["parent_run_id"])


def check_store(uri: str) -> str:
    """The URI's scheme, once the store is one this command can open (and exists, if local)."""
    from analysis.crosstrial.store import check_tracking_uri
    from study.run.guard import redact

    scheme = urllib.parse.urlparse(uri).scheme.lower().split("+")[0]
    if scheme not in (*SERVABLE_SCHEMES, "http", "https"):
        raise InputError(f"tracking URI {redact(uri)!r}: `nctune ui` serves "
                         f"{', '.join(SERVABLE_SCHEMES)} stores or links to an http(s) server; "
                         "open this store's own UI instead")
    check_tracking_uri(uri, must_exist=True)
    return scheme


def pick_port(port: int | None, default: int = DEFAULT_PORT) -> int:
    """The requested port if free (else one clear error); by default `default`, else any free
    one."""
    if port is not None:
        if not 1 <= port <= 65535:
            raise InputError(f"--port: {port} is not a port number (1-65535)")
        if not port_free(port):
            raise InputError(f"--port: {port} is in use on {HOST}; pick another, or leave "
                             "--port out to get a free one")
        return port
    if port_free(default):
        return default
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """Nothing listens on `port`; a closed server's TIME_WAIT sockets don't count (as for uvicorn,
    which binds with SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def links(base: str, target: Target, experiment_id: str | None) -> list[tuple[str, str]]:
    """(label, URL) pairs in MLflow 3's hash routes, opening the training-runs view."""
    view = urllib.parse.urlencode(ML_VIEW)
    if experiment_id is None:
        return [("experiments", f"{base}/#/experiments?{view}")]
    runs = f"{base}/#/experiments/{experiment_id}/runs"
    out = [(f"experiment '{target.experiment}'", f"{runs}?{view}")]
    if target.study:
        study_filter = f"tags.`{store.TAG_STUDY}` = '{target.study}'"
        query = urllib.parse.urlencode({**ML_VIEW, "searchFilter": study_filter},
                                       quote_via=urllib.parse.quote)
        out.append((f"study '{target.study}' runs", f"{runs}?{query}"))
    if target.parent_run_id:
        out.append(("parent run (description, report, figures)",
                    f"{runs}/{target.parent_run_id}?{view}"))
    return out


def server_command(uri: str, port: int, root: str) -> list[str]:
    """`mlflow server` on 127.0.0.1 with one worker; artifacts under <root>/artifacts."""
    # study.run.state.artifact_root puts a sqlite store's artifacts in <root>/artifacts; experiments
    # keep their own artifact location, this only decides where new ones and uploads go.
    artifacts = (Path(root).expanduser().resolve() / "artifacts").as_uri()
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
            "--host", HOST, "--port", str(port), "--workers", "1",
            "--default-artifact-root", artifacts, "--artifacts-destination", artifacts]


def log_path(root: str, name: str = "mlflow-ui.log") -> Path:
    """Where a server's log goes: under the storage root, else the temp folder."""
    folder = Path(root).expanduser().resolve()
    return (folder if folder.is_dir() else Path(tempfile.gettempdir())) / name


def wait_until_up(proc: subprocess.Popen, probe_url: str, log: Path,
                  server: str = "the MLflow server") -> None:
    """Poll `probe_url` until the server answers; fail with its log's tail if it exits first
    (shared by `nctune ui` and `nctune dashboard`)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"{server} exited with status {proc.returncode} before "
                              f"answering; the end of its log ({log}):\n{tail(log)}")
        try:
            with urllib.request.urlopen(probe_url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise ServerError(f"{server} did not answer within {START_TIMEOUT_S:.0f} s; "
                      f"the end of its log ({log}):\n{tail(log)}")


def experiment_id_of(base: str, target: Target) -> str | None:
    """The study's experiment id, else the id of the experiment by name (None if absent)."""
    if target.experiment_id:
        return target.experiment_id
    query = urllib.parse.urlencode({"experiment_name": target.experiment})
    try:
        with urllib.request.urlopen(
                f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=10) as r:
            return str(json.load(r)["experiment"]["experiment_id"])
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return None


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a server's log file, for the error shown when it fails to start."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ServerError(RuntimeError):
    """The MLflow server would not start."""


def stop(proc: subprocess.Popen) -> None:
    """SIGINT to `mlflow server` (it forwards it to uvicorn and waits), then clear its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.terminate()
    # Whatever the server left in its own session (a uvicorn worker) goes with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C, `kill` and a closed terminal or SSH session all stop the server in order.

    The server runs in its own session, so without this a hang-up would orphan it. SIGINT gets
    Python's handler back even where it was inherited as ignored (a job started with `&` from a
    script), since Ctrl-C is the documented way to stop this command.
    """
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def say(text: str = "") -> None:
    """Print a line at once (the server keeps running after it)."""
    print(text, flush=True)


def cmd_ui(args: argparse.Namespace) -> int:
    """`nctune ui [NAME]`: serve the study's store in the MLflow UI until Ctrl-C."""
    from study.run.guard import redact

    target = find_target(args.name, args.root)
    scheme = check_store(target.tracking_uri)
    if scheme in ("http", "https"):  # a tracking server has its UI already
        base = target.tracking_uri.rstrip("/")
        say(f"The tracking store is an MLflow server; its UI is at {redact(base)}")
        for label, url in links(base, target, experiment_id_of(base, target)):
            say(f"  {label}: {redact(url)}")
        return 0
    port = pick_port(args.port)
    base = f"http://{HOST}:{port}"
    log = log_path(args.root)
    # GenAI job runners (huey consumers) serve nothing a study uses; keep the server to one process.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           **os.environ}
    say(f"Starting the MLflow UI on {redact(target.tracking_uri)} (server log: {log}) ...")
    with interruptible(), open(log, "w") as out:
        proc = subprocess.Popen(server_command(target.tracking_uri, port, args.root),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        try:
            wait_until_up(proc, f"{base}/health", log)
            say(f"MLflow UI: {base}")
            for label, url in links(base, target, experiment_id_of(base, target)):
                say(f"  {label}: {url}")
            say("Runs are nested under the study's run: click + beside it to list the trials. "
                "Press Ctrl-C to stop.")
            code = proc.wait()
            print(f"nctune: error: the MLflow server stopped (status {code}); see {log}",
                  file=sys.stderr)
            return 1
        except ServerError as exc:
            print(f"nctune: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            say("\nStopping the MLflow UI ...")
            stop(proc)
            say("Stopped.")
            return 0
        finally:
            stop(proc)  # idempotent; also on errors
