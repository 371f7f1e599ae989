"""Trials that die, fail or run side by side, with real processes: a trial worker SIGKILLed
mid-trial resumes from its checkpoint in the same MLflow run; exceptions inside trials (a
corrupt cache file, an oversized episode, a config the data set cannot satisfy) end just those
trials, recorded in MLflow; concurrent trials lose no metric while another process reads the
store. The module's local Ray is also checked to listen on 127.0.0.1 only.

The module runs its own Ray with its own NCTUNE_CACHE (Ray workers take the environment Ray
started with), so corrupting a cached file here touches no other test's cache.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray
from mlflow.tracking import MlflowClient
from ray._raylet import AuthenticationMode, get_authentication_mode

from study.run.driver import run_study
from study.run.tuner import init_ray
from tests.study.reliability import audit, kill_study, live_results, study_runs, this_session
from tests.study.studies import tiny_study
from trainables.data import load_splits
from trainables.data.cache import file_sha256

pytestmark = pytest.mark.slow
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache holding only the session's rendered glyphs (rendering takes ~10 s)."""
    session = Path(os.environ["NCTUNE_CACHE"])
    load_splits(tiny_study(Path("unused")).dataset)  # renders into the session cache once
    mine = tmp_path_factory.mktemp("cache")
    for kind in ("glyph-block", "glyph-classes"):
        shutil.copytree(session / kind, mine / kind)
    os.environ["NCTUNE_CACHE"] = str(mine)
    init_ray(None)
    yield mine
    ray.shutdown()
    os.environ["NCTUNE_CACHE"] = str(session)


def test_local_ray_listens_on_loopback_only_without_dashboard_with_token_auth(cache):
    listening = []
    for proc in psutil.Process().children(recursive=True):
        try:
            listening += [(proc.name(), c.laddr) for c in proc.net_connections("inet")
                          if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    assert listening, "found none of Ray's servers"
    assert [x for x in listening if x[1].ip not in LOOPBACK] == []
    assert not ray._private.worker.global_worker.node.address_info.get("webui_url")
    assert get_authentication_mode() == AuthenticationMode.TOKEN


def test_killed_trial_worker_resumes_from_its_checkpoint_in_the_same_run(tmp_path, cache):
    cfg, _ = kill_study(tmp_path, "worker-kill", search={"num_samples": 2})
    killed: list[int] = []

    def results() -> list[dict]:
        return live_results(this_session(), "worker-kill")

    def kill_worker_at_epoch_2() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            for result in results():
                if result.get("epoch") == 2:
                    os.kill(result["pid"], signal.SIGKILL)  # Tune records each worker's pid
                    killed.append(result["pid"])
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_worker_at_epoch_2, daemon=True)
    killer.start()
    state = run_study(cfg, report=False)
    killer.join()
    assert killed and state.status == "completed"
    got = audit(cfg, state.tracking_uri)
    assert got["trials_completed"] == got["child_runs"] == 2  # one run, not a second one
    assert got["duplicated_steps"] == got["missing_steps"] == 0
    trials = [[r for r in results() if r["trial_id"] == tid]
              for tid in {r["trial_id"] for r in results()}]
    (results,) = [rs for rs in trials if killed[0] in {r["pid"] for r in rs}]
    after = [r["epoch"] for r in results if r["pid"] != killed[0] and r.get("epoch")]
    assert after and min(after) >= 2, after  # restored from a checkpoint, not from epoch 1
    assert max(after) == cfg.training.epochs


def corrupt_cached_split(dataset) -> Path:
    """Flip bytes in the middle of a cached split image file (its .npy header stays valid)."""
    load_splits(dataset)
    matches = [p for p in (Path(os.environ["NCTUNE_CACHE"]) / "splits").glob("*/meta.json")
               if f'"num_source_classes": {dataset.num_source_classes}' in p.read_text()
               and f'"split_seed": {dataset.split_seed}' in p.read_text()]
    (meta,) = matches
    target = meta.parent / "source_train_images.npy"
    data = bytearray(target.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(255 - b for b in data[middle:middle + 64])
    target.write_bytes(bytes(data))
    return target


def test_exceptions_fail_only_their_trials_and_a_corrupt_cache_file_is_rebuilt(tmp_path, cache):
    # The driver prepares 6 source classes; the trials ask for 8 (cached, then corrupted here,
    # so the trial's own load meets the bad file) or 5000 (more than glyphs has), with 3 or 500
    # queries per class (500 is more images than a target class holds).
    space = {"num_source_classes": {"type": "categorical", "values": [8, 5000]},
             "queries": {"type": "categorical", "values": [3, 500]}}
    cfg = tiny_study(tmp_path, name="failing", space=space,
                     dataset={"num_source_classes": 6, "split_seed": 11},
                     search={"sampler": "grid", "num_samples": None, "max_failures": 2})
    good = cfg.dataset.model_copy(update={"num_source_classes": 8})
    corrupted = corrupt_cached_split(good)
    meta_hash = file_sha256(corrupted)
    state = run_study(cfg, report=False)
    assert state.status == "completed"
    client = MlflowClient(state.tracking_uri)
    _, runs = study_runs(state.tracking_uri, "failing")
    by_config = {(r.data.params["num_source_classes"], r.data.params["queries"]): r for r in runs}
    assert by_config[("8", "3")].data.tags["nctune.status"] == "completed"
    expected_errors = {("8", "500"): "k_shot + q_query", ("5000", "3"): "5000 requested",
                       ("5000", "500"): "5000 requested"}
    for key, fragment in expected_errors.items():
        run = by_config[key]
        assert (run.info.status, run.data.tags["nctune.status"]) == ("FAILED", "failed")
        assert fragment in run.data.tags["nctune.error"]
        text = client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path))
        trace = Path(text).read_text()
        assert fragment in trace and 'File "' in trace and "\x1b[" not in trace
        # Bad input fails once: retrying (max_failures 2) could not help, so it is not retried.
        assert trace.count("Traceback (most recent call last)") == 1
    # The trial detected the flipped bytes by their hash and rebuilt the entry.
    assert file_sha256(corrupted) != meta_hash
    meta = (corrupted.parent / "meta.json").read_text()
    assert file_sha256(corrupted) in meta


READER = """
import sqlite3, sys, time, os
stop = sys.argv[2]
while not os.path.exists(stop):
    try:
        with sqlite3.connect(sys.argv[1], timeout=30) as con:
            con.execute("begin")
            con.execute("select count(*), sum(value) from metrics").fetchall()
            con.execute("select * from latest_metrics").fetchall()
            time.sleep(0.05)  # hold the read lock a moment, as a UI page load does
    except sqlite3.OperationalError:
        pass
    time.sleep(0.01)
"""


def test_concurrent_trials_lose_no_metric_while_the_store_is_read(tmp_path, cache, capfd):
    cfg = tiny_study(tmp_path, name="busy", search={"num_samples": 8, "max_concurrent": 2},
                     training={"epochs": 2, "device": "cpu"})
    db = tmp_path / "mlflow.db"
    stop = tmp_path / "stop-reading"
    reader = None

    def start_reader() -> None:
        nonlocal reader
        while not db.exists():
            time.sleep(0.05)
        reader = subprocess.Popen([sys.executable, "-c", READER, str(db), str(stop)])

    starter = threading.Thread(target=start_reader, daemon=True)
    starter.start()
    try:
        state = run_study(cfg, report=False)
    finally:
        stop.touch()
        starter.join()
        if reader is not None:
            reader.wait(timeout=30)
    assert state.status == "completed"
    got = audit(cfg, state.tracking_uri)
    assert got["trials_completed"] == got["child_runs"] == 8
    assert got["duplicated_steps"] == got["missing_steps"] == 0
    out = capfd.readouterr()
    assert "database is locked" not in out.out + out.err
