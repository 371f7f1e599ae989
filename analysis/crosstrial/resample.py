"""Bootstrap resamples of trials, and how many: shared by every cross-trial statistic.

A resample draws whole trials with replacement (a trial's epochs are not independent), kept as
integer draw counts per point; the statistics (analysis.crosstrial.correlate, rank_tau,
leaderboard) take the counts as weights, so no resample is ever materialised.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# A correlation table's bootstrap costs replicates x points per pair: at most this many cells, but
# never fewer than MIN_REPLICATES replicates. Studies up to 250 trials keep the asked-for count
# at trial level; pooled (trial, epoch) points of a 1,000-trial study get 200.
BOOT_CELLS = 500_000
MIN_REPLICATES = 200


def cluster_weights(groups: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_points) counts: each replicate draws len(unique(groups)) groups with replacement
    and every point weighs as often as its group was drawn."""
    codes, uniques = pd.factorize(pd.Series(groups))
    g = len(uniques)
    picks = rng.integers(0, g, size=(n_boot, g)) + g * np.arange(n_boot)[:, None]
    counts = np.bincount(picks.ravel(), minlength=n_boot * g).reshape(n_boot, g)
    return counts[:, codes].astype(float)


def replicates(n_boot: int, n_points: int) -> int:
    """Bootstrap replicates for `n_points` points: `n_boot`, cut so replicates x points stays
    within BOOT_CELLS, never below MIN_REPLICATES (the cost grows linearly with the study)."""
    return max(min(n_boot, MIN_REPLICATES), min(n_boot, BOOT_CELLS // max(n_points, 1)))
