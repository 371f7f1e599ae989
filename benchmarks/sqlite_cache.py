"""What does capping SQLite's page cache (study.run.sqlite_cache) cost the driver's MLflow writes,
and what does it save?

Expected run time: about 40 seconds on 2 cores.

How: in two fresh processes, one with SQLite's default page cache (2,000 KiB per connection) and
one with the driver's cap (`cap_sqlite_cache`, 256 KiB), write `--runs` MLflow runs to a new
sqlite store through a real `MlflowClient`, each as the driver logs a trial of the demo: 45
params in one batch, then 106 metrics per epoch for 2 epochs, one batch each, then the run's end.
Reported per mode: the seconds the writes took, and SQLite's own count of the memory it holds
(`sqlite3_memory_used`, the page caches included) after run 30 and at the end; then the ratio
of times (capped over default) and the growth after run 30 of each, as one JSON line.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MARK = 30  # the run after which growth is measured
N_METRICS, N_PARAMS, EPOCHS = 106, 45, 2


def sqlite_memory_kib() -> float:
    """SQLite's memory in use in this process (KiB), page caches included."""
    lib = ctypes.CDLL("libsqlite3.so.0")
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    return lib.sqlite3_memory_used() / 1024


def write_runs(runs: int, capped: bool) -> dict[str, Any]:
    """Write `runs` demo-sized MLflow runs to a new sqlite store in this process."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    if capped:
        from study.run.sqlite_cache import cap_sqlite_cache

        cap_sqlite_cache()
    keys = [f"family{i // 10}/metric_{i}/acc" for i in range(N_METRICS)]
    with tempfile.TemporaryDirectory(prefix="nctune-sqlite-") as tmp:
        client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        experiment = client.create_experiment("bench")
        start, at_mark = time.perf_counter(), 0.0
        for index in range(runs):
            run_id = client.create_run(experiment).info.run_id
            client.log_batch(run_id, params=[Param(f"param_{i}", str(i)) for i in range(N_PARAMS)])
            for epoch in range(1, EPOCHS + 1):
                now = int(time.time() * 1000)
                client.log_batch(run_id, metrics=[Metric(k, 0.5, now, epoch) for k in keys])
            client.set_terminated(run_id)
            if index + 1 == MARK:
                at_mark = sqlite_memory_kib()
        seconds = time.perf_counter() - start
        return {"write_s": round(seconds, 2), "sqlite_kib_at_run_30": round(at_mark),
                "sqlite_kib_end": round(sqlite_memory_kib()),
                "db_mb": round(Path(tmp, "mlflow.db").stat().st_size / 2**20, 1)}


def in_fresh_process(runs: int, capped: bool) -> dict[str, Any]:
    """`write_runs` in a new interpreter (the cap is process-wide and cannot be undone)."""
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); "
            f"from benchmarks.sqlite_cache import write_runs; "
            f"print(json.dumps(write_runs({runs}, {capped})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    """Both modes, then one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="MLflow runs per mode (300)")
    args = parser.parse_args()
    if args.runs <= MARK:
        parser.error(f"--runs must be more than {MARK}, got {args.runs}")
    default, capped = in_fresh_process(args.runs, False), in_fresh_process(args.runs, True)
    growth = {name: mode["sqlite_kib_end"] - mode["sqlite_kib_at_run_30"]
              for name, mode in (("default", default), ("capped", capped))}
    print(json.dumps({"benchmark": "sqlite_cache", "runs": args.runs, "default": default,
                      "capped": capped, "write_s_capped_over_default":
                      round(capped["write_s"] / default["write_s"], 3),
                      "sqlite_kib_growth_after_run_30": growth}))


if __name__ == "__main__":
    main()
