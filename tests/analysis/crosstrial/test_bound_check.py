"""bound_check: the CDNV bound against the observed NCC error, from logged metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from analysis.crosstrial.bound_check import (
    bound_sentences,
    bound_summary,
    bound_table,
    episode_shapes,
    unchecked_bounds,
)
from analysis.crosstrial.runs import load_study
from tests.analysis.conftest import FakeTrial, synth_trial, write_study


def _trial(errors: list[float], bounds: list[float], *, raw: bool = True,
           ci: float = 0.02) -> FakeTrial:
    """One trial whose 5w5s error and logged bound at each epoch are given."""
    t = synth_trial({"weight_decay": 1e-4}, cdnv_final=0.1, acc_final=0.8, epochs=len(errors))
    t.metrics = {k: v for k, v in t.metrics.items()
                 if not k.startswith(("fewshot/", "bound/"))}
    clf = "ncc_raw" if raw else "ncc"
    for e, (err, b) in enumerate(zip(errors, bounds, strict=True), start=1):
        t.metrics.setdefault(f"fewshot/5w5s/{clf}/acc", {})[e] = 1.0 - err
        t.metrics.setdefault(f"fewshot/5w5s/{clf}/ci95", {})[e] = ci
        t.metrics.setdefault("bound/5w5s", {})[e] = b
    return t


def test_holds_vacuous_and_looseness_are_counted_exactly(new_store: Callable[[], str]) -> None:
    uri = new_store()
    trials = [
        _trial([0.5, 0.3, 0.2], [4.0, 0.6, 0.4]),     # holds everywhere; epoch 1 vacuous
        _trial([0.5, 0.4, 0.3], [0.45, 0.39, 0.1]),  # fails everywhere; within CI at epoch 2
        _trial([0.4, 0.2, 0.1], [2.0, 1.0, 0.2]),     # holds; vacuous at epochs 1-2
    ]
    write_study(uri, "bound", trials, searched=["weight_decay"])
    t = bound_table(load_study("bound", uri))
    assert len(t) == 9 and set(t["classifier"]) == {"ncc_raw"}
    assert set(t["bound_source"]) == {"logged"}
    assert t["holds"].sum() == 6
    assert t["holds_within_ci"].sum() == 7  # 0.39 >= 0.4 - 0.02
    assert t["vacuous"].sum() == 3
    fin = t[t["final"]].set_index("trial_index")
    assert list(fin["epoch"]) == [3, 3, 3]
    assert fin.loc[0, "ratio"] == pytest.approx(2.0) and fin.loc[1, "gap"] == pytest.approx(-0.2)
    s = bound_summary(t).iloc[0]
    assert s["points"] == 9 and s["trials"] == 3
    assert s["holds_frac"] == pytest.approx(6 / 9) and s["non_vacuous_frac"] == pytest.approx(6 / 9)
    # informative points only: 2 of trial 0, 3 of trial 1 (all fail), 1 of trial 2
    assert s["non_vacuous_holds_frac"] == pytest.approx(3 / 6)
    assert s["final_holds_frac"] == pytest.approx(2 / 3)
    assert s["median_ratio"] == pytest.approx(np.median(t["bound"] / t["error"]))


def test_cdnv_bound_is_not_checked_without_ncc_raw(new_store: Callable[[], str]) -> None:
    """The CDNV bound is about raw-feature NCC: the centred-normalised ncc error must not stand
    in for it; the check says it cannot be checked instead."""
    uri = new_store()
    write_study(uri, "l2", [_trial([0.3, 0.2], [1.5, 0.5], raw=False) for _ in range(2)],
                searched=["weight_decay"])
    s = load_study("l2", uri)
    t = bound_table(s)
    assert t.empty
    (line,) = unchecked_bounds(s)
    assert "CDNV bound for 5w5s cannot be checked" in line and "ncc_raw" in line


def test_cantelli_bound_is_checked_against_primary_ncc(new_store: Callable[[], str]) -> None:
    uri = new_store()
    trials = []
    for errors, bounds in (([0.3, 0.2], [0.5, 0.15]), ([0.4, 0.1], [1.2, 0.3])):
        t = _trial(errors, [40.0, 30.0])  # CDNV bound against ncc_raw, vacuous
        for e, (err, b) in enumerate(zip(errors, bounds, strict=True), start=1):
            t.metrics.setdefault("fewshot/5w5s/ncc/acc", {})[e] = 1.0 - err - 0.05
            t.metrics.setdefault("bound_cantelli/5w5s", {})[e] = b
        trials.append(t)
    write_study(uri, "cant", trials, searched=["weight_decay"])
    s = load_study("cant", uri)
    t = bound_table(s)
    assert unchecked_bounds(s) == []
    c = t[t["bound_name"] == "cantelli"]
    assert set(c["classifier"]) == {"ncc"} and len(c) == 4
    assert c["error"].tolist() == pytest.approx([0.35, 0.25, 0.45, 0.15])
    assert c["holds"].tolist() == [True, False, True, True]
    summ = bound_summary(t).set_index("bound_name")
    assert summ.loc["cantelli", "non_vacuous_frac"] == pytest.approx(0.75)
    assert summ.loc["cantelli", "final_non_vacuous_frac"] == pytest.approx(1.0)
    assert summ.loc["cdnv", "non_vacuous_frac"] == 0.0
    assert summ.loc["cdnv", "classifier"] == "ncc_raw"
    lines = bound_sentences(bound_summary(t))
    assert any(line.startswith("The Cantelli bound") for line in lines)


def test_bound_computed_from_cdnv_when_not_logged(new_store: Callable[[], str]) -> None:
    uri = new_store()
    trials = [synth_trial({"weight_decay": 1e-4}, cdnv_final=c, acc_final=0.8, epochs=2)
              for c in (0.01, 0.05)]
    for t in trials:
        t.metrics = {k: v for k, v in t.metrics.items() if not k.startswith("bound/")}
    write_study(uri, "nobound", trials, searched=["weight_decay"])
    s = load_study("nobound", uri)
    t = bound_table(s)
    assert set(t["bound_source"]) == {"computed from cdnv/target"}
    assert set(t["shape"]) == {"5w1s", "5w5s"}
    # 8 (n - 1)(1 + 1/k) CDNV written out: 5w1s -> 64 CDNV, 5w5s -> 38.4 CDNV.
    factor = {"5w1s": 8 * 4 * 2.0, "5w5s": 8 * 4 * 1.2}
    for r in t.itertuples():
        assert r.bound == pytest.approx(factor[r.shape] * r.cdnv_target, rel=1e-12)
    final = t[t["final"] & (t["shape"] == "5w5s")].sort_values("cdnv_target")
    assert final["bound"].tolist() == pytest.approx([38.4 * 0.01, 38.4 * 0.05])


def test_failed_trials_and_missing_metrics_do_not_crash(new_store: Callable[[], str]) -> None:
    uri = new_store()
    failed = FakeTrial({"weight_decay": 1e-3, "epochs": 3}, {"source/train_loss": {1: 2.0}},
                       status="failed", error="boom")
    write_study(uri, "few", [failed, _trial([0.3], [0.5])], searched=["weight_decay"])
    s = load_study("few", uri)
    t = bound_table(s)
    assert list(t["trial_index"]) == [1]
    assert episode_shapes(s.history) == ["5w5s"]
    bare = dataclasses.replace(s, history=s.history.drop(columns=[c for c in s.history
                                                                   if "/" in c]))
    empty = bound_table(bare)
    assert empty.empty and bound_summary(empty).empty
