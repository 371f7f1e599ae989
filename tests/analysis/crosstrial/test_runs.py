"""analysis.crosstrial.runs: a study read back from real MLflow stores into tidy frames."""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from analysis.crosstrial.runs import check_tracking_uri, load_study, resolve_tracking_uri
from analysis.errors import InputError
from tests.analysis.conftest import FakeTrial, synth_trial, write_study


def _small(n: int = 4, epochs: int = 4) -> list[FakeTrial]:
    return [synth_trial({"weight_decay": 10.0 ** -(i + 2), "dropout": 0.1 * i},
                        cdnv_final=0.1 * (i + 1), acc_final=0.9 - 0.05 * i, epochs=epochs)
            for i in range(n)]


def test_frames_round_trip(new_store: Callable[[], str]) -> None:
    uri = new_store()
    trials = _small()
    write_study(uri, "rt", trials, searched=["weight_decay", "dropout"])
    s = load_study("rt", uri)
    assert s.name == "rt" and s.searched == ["weight_decay", "dropout"]
    assert len(s.trials) == 4 and len(s.final) == 4
    assert len(s.history) == 16  # one row per (trial, epoch)
    assert not s.history.duplicated(["trial_index", "epoch"]).any()
    assert s.trials["usable"].all() and (s.trials["note"] == "").all()
    # params get their types back from MLflow's strings
    assert s.trials["weight_decay"].dtype == float and s.trials["epochs"].dtype == np.int64
    assert s.trials["amp"].dtype == bool and s.trials["shapes"].iloc[0] == "['5w1s', '5w5s']"
    # every logged value is read back at its step
    for i, t in enumerate(trials):
        h = s.history[s.history["trial_index"] == i].set_index("epoch")
        for key, hist in t.metrics.items():
            for epoch, value in hist.items():
                assert h.loc[epoch, key] == pytest.approx(value)
    fin = s.final.set_index("trial_index")
    assert fin.loc[2, "cdnv/target"] == pytest.approx(0.3, rel=0.1)
    assert (fin["epoch"] == 4).all() and (fin["final_epoch"] == 4).all()


def test_one_value_per_step_later_write_wins(new_store: Callable[[], str]) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    uri = new_store()
    write_study(uri, "dup", _small(3), searched=["weight_decay"])
    s = load_study("dup", uri)
    run_id = s.trials["run_id"].iloc[0]
    far = int(time.time() * 1000) + 10_000  # a resumed trial re-logging epoch 2, later
    MlflowClient(uri).log_batch(run_id, metrics=[Metric("cdnv/target", 42.0, far, 2)])
    h = load_study("dup", uri).history
    row = h[(h["trial_index"] == 0) & (h["epoch"] == 2)]
    assert len(row) == 1 and row["cdnv/target"].iloc[0] == 42.0


def test_failed_diverged_missing_and_stopped_are_kept_and_flagged(
        new_store: Callable[[], str]) -> None:
    uri = new_store()
    trials = _small(6, epochs=5)
    # failed at epoch 2 before any evaluation
    trials[1] = FakeTrial(trials[1].params, {"source/train_loss": {1: 2.0, 2: 1.5}},
                          status="failed", error="RuntimeError: CUDA out of memory")
    # diverged: the tracking callback drops non-finite values, the status tag says it
    trials[2].status = "diverged"
    for hist in trials[2].metrics.values():
        for e in (4, 5):
            hist.pop(e, None)
    # epoch 3 never logged
    for hist in trials[3].metrics.values():
        hist.pop(3, None)
    # early-stopped by the scheduler after 3 of 5 epochs: usable, flagged
    trials[4].status = "stopped"
    for hist in trials[4].metrics.values():
        for e in (4, 5):
            hist.pop(e, None)
    # an infinite loss written as such (MLflow stores it as max float) is divergence too
    trials[5].metrics["source/train_loss"][5] = math.inf
    write_study(uri, "messy", trials, searched=["weight_decay"])
    s = load_study("messy", uri)
    t = s.trials.set_index("trial_index")
    assert list(t["usable"]) == [True, False, False, True, True, False]
    assert t.loc[1, "status"] == "failed" and "CUDA out of memory" in t.loc[1, "note"]
    assert np.isnan(t.loc[1, "final_epoch"]) and "no evaluation" in t.loc[1, "note"]
    assert t.loc[2, "diverged"] and t.loc[2, "final_epoch"] == 3
    assert t.loc[3, "missing_epochs"] == "3" and t.loc[3, "final_epoch"] == 5
    assert t.loc[4, "incomplete"] and "ran 3 of 5" in t.loc[4, "note"]
    assert t.loc[5, "diverged"] and "non-finite training loss from epoch 5" in t.loc[5, "note"]
    assert len(s.final) == 6  # kept, not dropped
    assert sorted(s.usable["trial_index"]) == [0, 3, 4]
    assert len(s.problems) == 5 and any("failed" in p for p in s.problems)


def test_searched_inferred_without_tag(new_store: Callable[[], str]) -> None:
    from mlflow import MlflowClient

    uri = new_store()
    parent = write_study(uri, "untagged", _small(3), searched=["weight_decay"])
    MlflowClient(uri).delete_tag(parent, "nctune.searched")
    assert load_study("untagged", uri).searched == ["weight_decay", "dropout"]


def test_unknown_study_and_experiment(new_store: Callable[[], str]) -> None:
    uri = new_store()
    write_study(uri, "alpha", _small(3), searched=["weight_decay"])
    with pytest.raises(InputError, match=r"no study named 'beta'.*alpha"):
        load_study("beta", uri)
    with pytest.raises(InputError, match=r"experiment 'other' not found.*nctune"):
        load_study("alpha", uri, experiment="other")


def test_missing_sqlite_store_is_an_error_not_a_new_file(tmp_path: Path) -> None:
    db = tmp_path / "nope" / "mlflow.db"
    with pytest.raises(InputError, match="no MLflow database"):
        load_study("x", f"sqlite:///{db}")
    assert not db.exists()
    check_tracking_uri(f"sqlite:///{db}")  # a writer may create it


@pytest.mark.timeout(60)  # MLflow's own retries would take minutes; the probe must not
def test_unreachable_server_fails_fast() -> None:
    with pytest.raises(InputError, match="no MLflow server answers"):
        load_study("x", "http://127.0.0.1:9")


def test_default_tracking_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'nctune-runs' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert resolve_tracking_uri() == "http://example:5000"
    # One resolver for the driver and every reader: a relative sqlite path means one file.
    assert resolve_tracking_uri("sqlite:///x.db") == f"sqlite:///{tmp_path / 'x.db'}"
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(None, tmp_path / "r") == f"sqlite:///{tmp_path / 'r' / 'mlflow.db'}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_reads_through_a_tracking_server(new_store: Callable[[], str], tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    uri = new_store()
    write_study(uri, "remote", _small(3), searched=["weight_decay"])
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    # its own process group: the server's workers are stopped with it
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240  # a loaded 2-core machine starts it slowly
        while time.monotonic() < deadline and server.poll() is None:
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
        with caplog.at_level(logging.WARNING, logger="analysis.crosstrial.history_read"):
            s = load_study("remote", url)  # through the server's get-history-bulk endpoint
        assert not caplog.records, "the bulk endpoint fell back to per-key calls"
        local = load_study("remote", uri)
        assert s.tracking_uri == url and len(s.history) == len(local.history) == 12
        cols = sorted(c for c in local.history.columns if "/" in c)
        np.testing.assert_allclose(s.history[cols].to_numpy(float),
                                   local.history[cols].to_numpy(float))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
