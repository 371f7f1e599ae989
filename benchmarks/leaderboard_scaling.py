"""The leaderboard's weighted tau bootstrap at 256 and 1,000 trials: by sorting against pairs.

Claim: `analysis.crosstrial.rank_tau` computes tau_w (and tau-b) on B bootstrap resamples in
O(B n log n) time and O(B n) memory; the former (B, n, n) pair-array code (kept here as the
baseline, run only where it fits: 256 trials) needs O(B n^2) of both. Both run in this process
on the same data and resamples with `replicate_count` replicates for a leaderboard of 60
candidates x 8 accuracies; peak memory is tracemalloc's (numpy reports its buffers). With
`--full`, also times `leaderboard_table` on a synthetic 1,000-trial frame of that size.
The last line printed is one JSON object.

    .venv/bin/python benchmarks/leaderboard_scaling.py [--full]
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import pandas as pd

from analysis import contract as names
from analysis.crosstrial import correlate as corr
from analysis.crosstrial.leaderboard import leaderboard_table, replicate_count
from analysis.crosstrial.rank_tau import taus

PAIRS = 60 * 8


def pair_array_tau(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The leaderboard's former weighted tau over (B, n) expanded resamples: (B, n, n) pairs."""
    def half(key: np.ndarray, other: np.ndarray) -> np.ndarray:
        perm = np.lexsort((other, key), axis=-1)[:, ::-1]
        w = 1.0 / (np.argsort(perm, axis=-1) + 1.0)
        iu = np.triu_indices(x.shape[1], 1)
        weight = (w[:, :, None] + w[:, None, :])[:, iu[0], iu[1]]
        sx = np.sign(x[:, :, None] - x[:, None, :])[:, iu[0], iu[1]]
        sy = np.sign(y[:, :, None] - y[:, None, :])[:, iu[0], iu[1]]
        return (weight * sx * sy).sum(1) / np.sqrt((weight * sx * sx).sum(1)
                                                   * (weight * sy * sy).sum(1))
    return (half(x, y) + half(y, x)) / 2


def measure(fn: Callable[[], np.ndarray]) -> tuple[float, float, np.ndarray]:
    """(seconds, peak MiB, result) of one call."""
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return dt, peak, out


def one_size(n: int, baseline: bool) -> dict:
    """Time tau_w on replicate_count(n) resamples of one (candidate, accuracy) pair."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    y = x + rng.normal(size=n)
    b = replicate_count(n, PAIRS, 2000)
    counts = corr.cluster_weights(np.arange(n), b, rng)
    t, mem, new = measure(lambda: taus(x, y, counts)[0])
    row = {"n": n, "replicates": b, "sorting_s": round(t, 4), "sorting_peak_mib": round(mem, 1),
           "leaderboard_tau_s_est": round(t * PAIRS, 1)}
    if baseline:
        idx = np.stack([np.repeat(np.arange(n), c) for c in counts.astype(int)])
        tb, memb, old = measure(lambda: pair_array_tau(x[idx], y[idx]))
        row.update(pairs_s=round(tb, 4), pairs_peak_mib=round(memb, 1),
                   speedup=round(tb / t, 1), memory_ratio=round(memb / mem, 1),
                   max_abs_diff=float(np.max(np.abs(old - new))))
    return row


def full_leaderboard(n: int) -> dict:
    """leaderboard_table on n trials x 60 candidates x 8 accuracies (synthetic)."""
    rng = np.random.default_rng(0)
    latent = rng.normal(size=n)
    cols = {names.SOURCE_TEST_ACC: latent + rng.normal(size=n)}
    cols |= {f"fewshot/{s}/{h}/acc": latent + rng.normal(size=n) for s in ("5w1s", "5w5s")
             for h in ("ncc", "ncc_raw", "lr", "knn")}
    cols |= {f"layer/block{j:02d}/erank/target": latent + 2 * rng.normal(size=n)
             for j in range(59)}
    frame = pd.DataFrame(cols).assign(trial_index=np.arange(n))
    t, mem, _ = measure(lambda: leaderboard_table(frame)[0])
    return {"full_n": n, "full_leaderboard_s": round(t, 1), "full_peak_mib": round(mem, 1)}


def main() -> None:
    """Print the sizes' rows, then one JSON line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="also time leaderboard_table at 1,000")
    args = p.parse_args()
    rows = [one_size(256, True), one_size(1000, False)]
    out: dict = {"benchmark": "leaderboard_scaling", "pairs": PAIRS, "sizes": rows}
    if args.full:
        out.update(full_leaderboard(1000))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
