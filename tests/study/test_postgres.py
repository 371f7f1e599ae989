"""A lab's set-up, for real: an `mlflow server` whose backend store is PostgreSQL and the Optuna
storage in PostgreSQL too. A study is killed with SIGKILL mid-study and resumed; both stores
then hold every trial once and no metric step twice.

Needs a PostgreSQL on 127.0.0.1 and a role that may create databases, given as
NCTUNE_TEST_POSTGRES=postgresql://USER:PASSWORD@127.0.0.1:PORT (.ci/run installs Debian's
postgresql, starts it and sets this); without it the tests skip and say so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from study.cli import main
from tests.study.reliability import (
    Driver,
    audit,
    kill_study,
    live_results,
    optuna_audit,
)
from tests.study.test_ui import free_port

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ENV = "NCTUNE_TEST_POSTGRES"
EPOCHS = 2


@pytest.fixture(scope="module")
def databases() -> Iterator[dict[str, str]]:
    """Two fresh databases (MLflow's, Optuna's), dropped at the end."""
    base = os.environ.get(ENV)
    if not base:
        pytest.skip(f"no PostgreSQL: set {ENV}=postgresql://USER:PASSWORD@127.0.0.1:PORT (a role "
                    "that may create databases; .ci/run starts Debian's postgresql and sets it)")
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e .")
    names = {k: f"nctune_{k}_{uuid.uuid4().hex[:8]}" for k in ("mlflow", "optuna")}
    try:
        with psycopg.connect(f"{base}/postgres", autocommit=True, connect_timeout=5) as con:
            for name in names.values():
                con.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL at {ENV} cannot create a database: {str(exc).strip()[:200]}")
    yield {k: f"postgresql+psycopg://{base.split('://', 1)[1]}/{v}" for k, v in names.items()}
    with psycopg.connect(f"{base}/postgres", autocommit=True) as con:
        for name in names.values():
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def mlflow_on_postgres(databases, tmp_path_factory) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with the PostgreSQL backend store; its URL."""
    folder = tmp_path_factory.mktemp("pgserver")
    port = free_port()
    log = folder / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", databases["mlflow"],
             "--artifacts-destination", str(folder / "artifacts")],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.monotonic() + 300  # the first start migrates an empty database
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(log.read_text()) from None
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_wrong_password_is_one_masked_line_before_anything_starts(databases, tmp_path, capsys):
    user = os.environ[ENV].split("://", 1)[1].split(":", 1)[0]
    wrong = databases["optuna"].replace(f"{user}:", f"{user}:not-the-password-", 1)
    _, yaml_file = kill_study(tmp_path, "pgwrong")
    code = main(["run", str(yaml_file), "--set", f"search.storage={wrong}", "--no-report"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "password authentication failed" in err
    assert "not-the-password" not in err and "***@127.0.0.1" in err
    assert not (tmp_path / "studies").exists() and not (tmp_path / "ray").exists()


def test_sigkill_and_resume_on_postgresql_count_every_trial_once(
        databases, mlflow_on_postgres, tmp_path, local_ray):
    name = "pgkill"
    cfg, yaml_file = kill_study(tmp_path, name, tracking={"uri": mlflow_on_postgres},
                                search={"num_samples": 2, "storage": databases["optuna"]},
                                training={"epochs": EPOCHS})
    driver = Driver(["run", str(yaml_file), "--no-report"], cwd=tmp_path)

    def first_trial_done() -> bool:  # one trial ended; the study is not over
        return any(r.get("epoch") == EPOCHS for r in live_results(Path(driver.temp), name))

    try:
        driver.wait_for("the first trial's last epoch", first_trial_done)
        driver.signal(signal.SIGKILL)
        assert driver.wait() == -signal.SIGKILL
    finally:
        strays = driver.stop()
    assert strays == []
    assert main(["resume", name, "--root", str(tmp_path), "--no-report"]) == 0
    uri = cfg.tracking_uri()
    got = audit(cfg, uri)
    assert got["trials_completed"] == got["child_runs"] == cfg.num_samples
    assert got["duplicated_steps"] == got["missing_steps"] == got["runs_running"] == 0
    opt = optuna_audit(cfg, uri)
    assert opt["optuna_complete"] == cfg.num_samples and opt["optuna_running"] == 0
    assert opt["optuna_trial_ids"] == opt["mlflow_trial_ids"]
    assert opt["optuna_params_match_mlflow"]
