"""The study driver's SQLite page caches: 256 KiB per connection instead of up to 2,000 KiB.

The driver writes every trial's params and metrics to MLflow, and every trial to Optuna, through
SQLAlchemy. With sqlite stores (the default), each connection keeps a page cache of up to
SQLite's default 2,000 KiB, filled as the database grows: over trials 30 to 90 of the tiny study
of benchmarks/driver_scaling.py (memray, native stacks), MLflow's connection grew its cache by
25.7 KB per trial, most of the 35 KB of native memory the driver grew by per trial, until full,
100 trials in or later. The driver appends and looks up a few index pages per write, and the
file stays in the OS's cache, so a small cache costs it little: benchmarks/sqlite_cache.py
(300 MLflow runs of 106 metrics x 2 epochs written in one process, as the driver logs the demo's
trials) took 14.8 s with the default, sqlite's memory growing 2.9 -> 4.3 MB after run 30, and
15.7 s (1.06x; 1.05x in another run: 3 ms per run) with 256 KiB, flat at 1.6 MB from run 30.

Applied where a Ray driver starts (study.run.tuner.init_ray: `nctune study`, `resume` and
`probe`, with the report a study writes at its end); `nctune analyze`, `show` and `ls` keep
SQLite's default. PostgreSQL and other servers are not touched.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import event
from sqlalchemy.pool import Pool

CACHE_KIB = 256
CAPPED = "sqlite_cache_capped"  # the flag in a pooled connection's record


def cap_sqlite_cache() -> None:
    """From now on, every sqlite connection any SQLAlchemy engine of this process checks out
    (MLflow's, Optuna's, including connections pooled before) runs `PRAGMA cache_size =
    -256` once. Calling it again changes nothing."""
    if not event.contains(Pool, "checkout", capped):
        event.listen(Pool, "checkout", capped)


def capped(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """SQLAlchemy's checkout hook: cap a sqlite connection's page cache, once per connection."""
    if record.info.get(CAPPED) or not isinstance(dbapi_connection, sqlite3.Connection):
        return
    dbapi_connection.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    record.info[CAPPED] = True
