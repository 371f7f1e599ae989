"""The progress line a user watches: counts, epochs of running trials, the best trial."""

from __future__ import annotations

import io
from types import SimpleNamespace

from study.run.progress import ProgressPrinter

METRIC = "fewshot/5w5s/ncc/acc"


def trial(tid: str, status: str = "RUNNING", epochs: int = 4) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, status=status, config={"epochs": epochs},
                           get_error=lambda: None, error_file=None)


def test_best_is_each_trials_latest_value_like_the_final_summary():
    out = io.StringIO()
    p = ProgressPrinter(3, METRIC, "max", interval=0, stream=out)
    a, b = trial("a"), trial("b")
    for t in (a, b):
        p.on_trial_start(0, [a, b], t)
    p.on_trial_result(0, [a, b], a, {"epoch": 1, METRIC: 0.9})
    p.on_trial_result(0, [a, b], b, {"epoch": 1, METRIC: 0.5})
    p.on_trial_result(0, [a, b], a, {"epoch": 2, METRIC: 0.4})  # a got worse
    p.on_trial_result(0, [a, b], b, {"epoch": 2})  # not evaluated: keeps b's 0.5
    line = p.line([a, b])
    assert "best fewshot/5w5s/ncc/acc 0.500 (t002)" in line
    assert "2 running (t001 ep 2/4, t002 ep 2/4)" in line


def test_counts_finished_failed_diverged_and_starting():
    p = ProgressPrinter(4, METRIC, "min", interval=0, stream=io.StringIO())
    ts = [trial("a"), trial("b"), trial("c"), trial("d", status="PENDING")]
    for t in ts[:3]:
        p.on_trial_start(0, ts, t)
    p.on_trial_result(0, ts, ts[0], {"epoch": 1, "trial_status": "diverged"})
    p.on_trial_complete(0, ts, ts[0])
    p.on_trial_error(0, ts, ts[1])
    ts[0].status, ts[1].status = "TERMINATED", "ERROR"
    line = p.line(ts)
    assert "2/4 finished" in line and "1 running (t003" in line
    assert "1 failed · 1 diverged" in line and "1 starting" in line
