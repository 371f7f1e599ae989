"""Loading a study in bulk against per-(run, key) calls, on PostgreSQL and through `mlflow server`.

Expected run time: about 3 minutes on a 2-core machine for 64 trials (most of it writing); 256
trials take 10 or more, and under heavy load the server may drop a request (reported as its
`error`).

Claim: `load_study` reads a study's metric histories in bulk on every store a team uses, and is
faster than one `get_metric_history` call per (run, key): on PostgreSQL directly (one SELECT per
200 runs) and through an `mlflow server` whose backend is that PostgreSQL (the server's
get-history-bulk endpoint, one request per key and 100 runs), the bulk load is at least 3x
faster than the per-key load on the same store in the same run (`speedup_*`), and both give the
same frames (`same_*`).

How: a fresh PostgreSQL database (the role in --postgres must be allowed to create one) gets the
synthetic demo-metric study of benchmarks/analysis_scaling.py (--trials x --epochs), written
through study.run.tracking; then `mlflow server --backend-store-uri <that database>` on a free
loopback port; each of the four loads (postgres bulk / per key, server bulk / per key) is timed
once after one warm-up search. The database is dropped and the server stopped at the end.
Prints one JSON line, last.

    .venv/bin/python benchmarks/load_backends.py --postgres postgresql://USER:PW@127.0.0.1:5432
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_scaling import STUDY, build


def timed_loads(uri: str) -> dict[str, Any]:
    """Bulk and per-key load_study of the study at `uri`: seconds, and whether frames agree."""
    from mlflow.tracking import MlflowClient

    from analysis.crosstrial import history_read, runs

    MlflowClient(uri).search_experiments()
    fell_back: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = fell_back.append  # type: ignore[method-assign]
    logging.getLogger(history_read.__name__).addHandler(handler)
    real = history_read.read_histories
    reading: list[float] = []

    def timed(*args: Any, bulk: bool = True, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return real(*args, bulk=bulk, **kwargs)
        finally:
            reading.append(time.perf_counter() - t)

    runs.read_histories = timed  # type: ignore[attr-defined]
    try:
        t0 = time.perf_counter()
        bulk = runs.load_study(STUDY, uri)
        bulk_s = time.perf_counter() - t0
        logging.getLogger(history_read.__name__).removeHandler(handler)
        runs.read_histories = lambda *a, **k: timed(*a, **{**k, "bulk": False})  # type: ignore
        t0 = time.perf_counter()
        slow = runs.load_study(STUDY, uri)
        per_key_s = time.perf_counter() - t0
    finally:
        runs.read_histories = real  # type: ignore[attr-defined]
    same = bool(slow.history.equals(bulk.history))
    return {"bulk_s": round(bulk_s, 3), "per_key_s": round(per_key_s, 3),
            "speedup": round(per_key_s / bulk_s, 2), "same": same,
            # the histories alone (the rest of a load, runs and frames, is the same both ways)
            "histories_bulk_s": round(reading[0], 3), "histories_per_key_s": round(reading[1], 3),
            "histories_speedup": round(reading[1] / reading[0], 2),
            "bulk_fell_back": [r.getMessage()[:200] for r in fell_back]}


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(backend: str, folder: Path) -> tuple[subprocess.Popen, str]:
    """Start `mlflow server` on `backend`; returns the process and its URL once it answers."""
    port = free_port()
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        stdout=log, stderr=subprocess.STDOUT,
        cwd=folder, start_new_session=True, env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("mlflow server did not start: " + (folder / "server.log").read_text()[-500:])


def main() -> None:
    """Parse the flags, write the study, time the four loads, print the JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--postgres", default=os.environ.get("NCTUNE_TEST_POSTGRES", ""),
                   help="postgresql://USER:PW@HOST:PORT of a role that may create databases "
                        "(default $NCTUNE_TEST_POSTGRES)")
    p.add_argument("--trials", type=int, default=64)
    p.add_argument("--epochs", type=int, default=20)
    args = p.parse_args()
    if not args.postgres:
        print("--postgres (or NCTUNE_TEST_POSTGRES) is required", file=sys.stderr)
        raise SystemExit(2)
    import psycopg

    name = f"nctune_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{args.postgres}/postgres", autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    backend = f"postgresql+psycopg://{args.postgres.split('://', 1)[1]}/{name}"
    out: dict[str, Any] = {"benchmark": "load_backends", "trials": args.trials,
                           "epochs": args.epochs}
    server = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out["write"] = build(backend, args.trials, args.epochs, artifacts=Path(tmp) / "art")
            out["postgres"] = timed_loads(backend)
            print(f"# postgres: {out['postgres']}", file=sys.stderr, flush=True)
            server, url = serve(backend, Path(tmp))
            try:
                out["server"] = timed_loads(url)
            except Exception as exc:  # a server that dies under load: say so, keep the rest
                out["server"] = {"error": str(exc)[:300]}
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
            server = None
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGKILL)
        with psycopg.connect(f"{args.postgres}/postgres", autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps(out))


if __name__ == "__main__":
    main()
