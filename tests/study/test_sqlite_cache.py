"""study.run.sqlite_cache on real MLflow and Optuna sqlite stores and a real driver start."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import sqlalchemy as sa
from mlflow.tracking import MlflowClient
from sqlalchemy import event
from sqlalchemy.pool import NullPool, Pool

from study.run.sqlite_cache import CACHE_KIB, cap_sqlite_cache, capped

ROOT = Path(__file__).resolve().parents[2]
SQLITE_DEFAULT = -2000  # KiB: SQLite's own default (SQLITE_DEFAULT_CACHE_SIZE)


def cache_size(engine: sa.Engine) -> int:
    """The page cache size a connection of `engine` has (negative: KiB)."""
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA cache_size").scalar_one())


def test_the_caches_of_mlflow_and_optuna_connections_are_capped(tmp_path: Path) -> None:
    if event.contains(Pool, "checkout", capped):  # a study run earlier in this process
        event.remove(Pool, "checkout", capped)
    # opened before the cap, as the driver opens MLflow before Ray: its pooled connection too
    early = sa.create_engine(f"sqlite:///{tmp_path / 'early.db'}")
    assert cache_size(early) == SQLITE_DEFAULT
    cap_sqlite_cache()
    cap_sqlite_cache()  # twice: one listener
    assert cache_size(early) == -CACHE_KIB
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_experiment("x")
    store_engine = client._tracking_client.store.engine
    assert cache_size(store_engine) == -CACHE_KIB
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert cache_size(storage.engine) == -CACHE_KIB
    # a connection per checkout (what the analysis' bulk reader uses) is capped each time
    fresh = sa.create_engine(f"sqlite:///{tmp_path / 'early.db'}", poolclass=NullPool)
    assert cache_size(fresh) == cache_size(fresh) == -CACHE_KIB


def test_only_the_driver_caps_its_caches(tmp_path: Path) -> None:
    """A fresh process keeps SQLite's default until it starts a study's Ray (init_ray)."""
    probe = textwrap.dedent(f"""
        import os, sys
        import sqlalchemy as sa
        engine = sa.create_engine("sqlite:///{tmp_path / 'p.db'}")
        def size():
            with engine.connect() as conn:
                return conn.exec_driver_sql("PRAGMA cache_size").scalar_one()
        before = size()
        import ray
        from study.run.tuner import init_ray
        os.environ.pop("RAY_ADDRESS", None)
        init_ray(None)
        ray.shutdown()
        print(before, size())
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == [str(SQLITE_DEFAULT), str(-CACHE_KIB)]


def test_the_sqlite_cache_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/sqlite_cache.py end to end on a few runs (so it cannot rot)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sqlite_cache.py"),
                           "--runs", "32"], capture_output=True, text=True, timeout=240,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["benchmark"] == "sqlite_cache" and out["write_s_capped_over_default"] > 0
    for mode in ("default", "capped"):
        assert out[mode]["sqlite_kib_end"] > 0 and out[mode]["db_mb"] > 0
    # the capped process holds less: its caches stop at 256 KiB a connection
    assert out["capped"]["sqlite_kib_end"] < out["default"]["sqlite_kib_end"]
