"""benchmarks/collapse_scaling.py runs at a toy size and its two sides agree (values, not times)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "collapse_scaling.py"


def test_benchmark_prints_one_json_line_whose_sides_agree():
    args = ["--classes", "30", "--samples", "600", "--dim", "8", "--ref-pairs", "100",
            "--repeats", "1", "--outer-classes", "2"]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["benchmark"] == "collapse_scaling"
    assert (out["classes"], out["samples"], out["dim"]) == (30, 600, 8)  # C - 1 >= d here
    assert out["reference_pairs_timed"] == 100
    assert out["cdnv_max_rel_diff_on_timed_pairs"] < 1e-9
    assert out["nc1_rel_diff"] < 1e-9
    for key in ("ours_s", "reference_s", "speedup", "cdnv_only_speedup",
                "speedup_vs_outer_product_reference"):
        assert out[key] > 0, key
