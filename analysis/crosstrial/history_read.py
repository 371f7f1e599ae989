"""Read every metric history of a study's runs in bulk, as one long frame.

A study of n trials with K metric keys each holds n*K histories. Reading them with one
`get_metric_history` call each is n*K round trips (172,000 at 1,000 demo trials), so each store
type gets its bulk path:

    SQL store (sqlite, postgresql, mysql, mssql)
        one SELECT on MLflow's `metrics` table (run_uuid, key, value, timestamp, step, is_nan)
        per chunk of `SQL_CHUNK` run ids, through SQLAlchemy on the tracking URI itself.
    MLflow server (http, https)
        the server's `ajax-api/2.0/mlflow/metrics/get-history-bulk` endpoint: one request per
        (key, chunk of 100 runs), 8 in flight; K * ceil(n/100) requests instead of K * n.
    anything else (a file store), or a bulk path that fails
        the per-(run, key) `get_metric_history` calls (in parallel for a remote server).

All paths return the same frame: run_id, key, step, value, timestamp (value NaN where MLflow
recorded NaN; infinities still as MLflow's +/-max-float sentinel, which the caller maps back).
Progress goes to stderr while reading (tqdm; off when stderr is not a terminal).
"""

from __future__ import annotations

import logging
import sys
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import pandas as pd

T = TypeVar("T")
COLUMNS = ["run_id", "key", "step", "value", "timestamp"]
SQL_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mssql")
SQL_CHUNK = 200  # run ids per SELECT: well under every backend's bound-parameter limit
REST_CHUNK = 100  # the server's MAX_RUN_IDS_PER_REQUEST for get-history-bulk
REST_MAX_RESULTS = 25000  # the server's cap on points per get-history-bulk answer
REST_BULK = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
log = logging.getLogger(__name__)


def store_kind(uri: str) -> str:
    """'sql', 'rest' or 'other': which bulk path `read_histories` takes for `uri`."""
    scheme = urllib.parse.urlparse(uri).scheme.lower().split("+", 1)[0]
    if scheme in SQL_SCHEMES:
        return "sql"
    return "rest" if scheme in ("http", "https") else "other"


def read_histories(client: Any, uri: str, runs: Sequence[Any], *, label: str = "",
                   bulk: bool = True) -> pd.DataFrame:
    """Every metric point of `runs` as a long frame (see module docstring).

    Args:
        client: an MlflowClient on `uri` (used by the REST and per-key paths).
        uri: the tracking URI the runs were read from.
        runs: MLflow Run objects (their `data.metrics` names the keys each has).
        label: what the progress bar says it is loading.
        bulk: False forces the per-key path (benchmarks compare the two).
    """
    run_ids = [r.info.run_id for r in runs]
    kind = store_kind(uri) if bulk else "other"
    desc = f"loading {label}" if label else "loading metrics"
    if kind == "sql" and run_ids:
        try:
            return _sql(uri, run_ids, desc)
        except Exception as exc:  # an unexpected schema: the per-key calls still work
            log.warning("bulk SQL read failed (%s); reading per metric instead", exc)
    if kind == "rest" and run_ids:
        try:
            return _rest(client, runs, desc)
        except Exception as exc:  # an older server or a proxy without the ajax endpoint
            log.warning("bulk history endpoint failed (%s); reading per metric instead", exc)
    return _per_key(client, runs, desc, parallel=kind == "rest")


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _progress(items: Iterable[T], total: int, desc: str) -> Iterator[T]:
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=desc, unit="chunk" if total < 1000 else "call",
                    file=sys.stderr, leave=False, disable=None, dynamic_ncols=True)


def _sql(uri: str, run_ids: list[str], desc: str) -> pd.DataFrame:
    """One SELECT per chunk of run ids on MLflow's `metrics` table."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    engine = sa.create_engine(uri, poolclass=NullPool)
    query = sa.text("SELECT run_uuid, key, value, timestamp, step, is_nan FROM metrics "
                    "WHERE run_uuid IN :ids").bindparams(sa.bindparam("ids", expanding=True))
    parts: list[pd.DataFrame] = []
    chunks = list(_chunks(run_ids, SQL_CHUNK))
    try:
        with engine.connect() as con:
            for chunk in _progress(chunks, len(chunks), desc):
                rows = con.execute(query, {"ids": list(chunk)}).fetchall()
                columns = list(zip(*rows, strict=True)) if rows else [()] * 6
                parts.append(pd.DataFrame(dict(zip(
                    ["run_id", "key", "value", "timestamp", "step", "is_nan"], columns,
                    strict=True))))
    finally:
        engine.dispose()
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=[*COLUMNS, "is_nan"])
    value = np.array(df["value"], dtype=float)
    value[df["is_nan"].astype(bool).to_numpy()] = np.nan  # MLflow stores NaN as 0 + is_nan
    df["value"] = value
    return _typed(df)


def _host_creds(client: Any) -> Any:
    """The REST store's host and credentials (auth env vars included), as MLflow's own calls
    use them."""
    return client._tracking_client.store.get_host_creds()


def _rest(client: Any, runs: Sequence[Any], desc: str) -> pd.DataFrame:
    """One get-history-bulk request per (key, chunk of 100 runs that have the key)."""
    from mlflow.utils.rest_utils import http_request

    creds = _host_creds(client)
    by_key: dict[str, list[str]] = {}
    for r in runs:
        for key in r.data.metrics:
            by_key.setdefault(key, []).append(r.info.run_id)
    jobs = [(key, list(chunk)) for key, ids in by_key.items()
            for chunk in _chunks(ids, REST_CHUNK)]

    def fetch(job: tuple[str, list[str]]) -> list[dict[str, Any]]:
        key, ids = job
        resp = http_request(creds, REST_BULK, "GET", params={
            "run_id": ids, "metric_key": key, "max_results": REST_MAX_RESULTS})
        resp.raise_for_status()
        points = resp.json().get("metrics", [])
        if len(points) >= REST_MAX_RESULTS:  # truncated: this answer cannot be trusted whole
            raise RuntimeError(f"{key}: {len(points)} points hit the server's cap")
        return list(points)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(_progress(pool.map(fetch, jobs), len(jobs), desc))
    rows = [(p["run_id"], p["key"], p.get("step", 0), p.get("value", np.nan),
             p.get("timestamp", 0)) for points in answers for p in points]
    return _typed(pd.DataFrame(rows, columns=COLUMNS))


def _per_key(client: Any, runs: Sequence[Any], desc: str, *, parallel: bool) -> pd.DataFrame:
    """One get_metric_history call per (run, key); a remote server gets them in parallel."""
    jobs = [(r.info.run_id, key) for r in runs for key in r.data.metrics]

    def fetch(job: tuple[str, str]) -> list[tuple[str, str, int, float, int]]:
        run_id, key = job
        return [(run_id, key, m.step, m.value, m.timestamp)
                for m in client.get_metric_history(run_id, key)]

    if parallel and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(_progress(pool.map(fetch, jobs), len(jobs), desc))
    else:
        answers = [fetch(j) for j in _progress(jobs, len(jobs), desc)]
    rows = [row for rows in answers for row in rows]
    return _typed(pd.DataFrame(rows, columns=COLUMNS))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """The common columns with their types (value may be a string NaN/Infinity from JSON)."""
    out = df[COLUMNS].copy()
    out["run_id"] = out["run_id"].astype(str)
    out["key"] = out["key"].astype(str)
    out["step"] = out["step"].astype("int64")
    out["timestamp"] = out["timestamp"].astype("int64")
    out["value"] = pd.to_numeric(out["value"], errors="coerce").astype(float) \
        if out["value"].dtype == object else out["value"].astype(float)
    return out
