"""benchmarks/transfer_estimators.py and bound_demo.py run at a toy size and print one JSON line
whose figures are consistent (values, not times)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.contract import ESTIMATORS

BENCH = Path(__file__).resolve().parents[3] / "benchmarks"


def run(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_transfer_benchmark_prints_one_json_line():
    out = run("transfer_estimators.py", "--quick", "--repeats", "1")
    assert out["benchmark"] == "transfer_estimators" and out["quick"] is True
    assert (out["target_images"], out["target_classes"]) == (64, 8)
    assert set(out["per_estimator_s"]) == set(out["values"]) == set(ESTIMATORS)
    assert all(math.isfinite(v) for v in out["values"].values())
    assert out["ratio"] == pytest.approx(out["estimators_s"] / out["evaluate_s"], rel=1e-2)
    assert out["holds"] == (out["ratio"] <= 0.3)


@pytest.mark.slow
def test_bound_demo_prints_one_json_line():
    out = run("bound_demo.py", "--quick", "--epochs", "2")
    assert out["benchmark"] == "bound_demo" and len(out["points"]) == 2
    for p in out["points"]:
        assert 0 <= p["ncc_error"] <= 1 and 0 <= p["cantelli"] <= 1 and p["cdnv_bound"] > 0
    assert out["cantelli_vs_ncc"]["points"] == 2
