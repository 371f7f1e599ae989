"""rank_tau (tau_w and tau-b by sorting) against scipy and the old pair-array formula; the
max-t simultaneous bounds against a loop reference; aliases and NaN bounds in the view."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.crosstrial import correlate as corr
from analysis.crosstrial.leaderboard import aliases, leaderboard_view, tau_w
from analysis.crosstrial.rank_tau import taus, weighted_tau
from analysis.crosstrial.simultaneous import max_t_intervals


def pair_array_tau(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The leaderboard's former (B, n, n) pair-array weighted tau: the slow reference."""
    def half(key: np.ndarray, other: np.ndarray) -> np.ndarray:
        perm = np.lexsort((other, key), axis=-1)[:, ::-1]
        w = 1.0 / (np.argsort(perm, axis=-1) + 1.0)
        iu = np.triu_indices(x.shape[1], 1)
        weight = (w[:, :, None] + w[:, None, :])[:, iu[0], iu[1]]
        sx = np.sign(x[:, :, None] - x[:, None, :])[:, iu[0], iu[1]]
        sy = np.sign(y[:, :, None] - y[:, None, :])[:, iu[0], iu[1]]
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weight * sx * sy).sum(1) / np.sqrt((weight * sx * sx).sum(1)
                                                       * (weight * sy * sy).sum(1))
    return (half(x, y) + half(y, x)) / 2


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("n", [2, 5, 31, 33, 70])
def test_resample_taus_equal_scipy_on_the_expanded_draws(n: int, tied: bool):
    """A resample drawing trial i c_i times is the expanded sample x[idx] (ties from repeats,
    and ties in the data when `tied`): both statistics equal scipy's on it."""
    rng = np.random.default_rng(n + 100 * tied)
    x = rng.integers(0, 4, n).astype(float) if tied else rng.normal(size=n)
    y = rng.integers(0, 3, n).astype(float) if tied else x + rng.normal(size=n)
    counts = np.vstack([np.ones(n), rng.multinomial(n, np.ones(n) / n, size=6)])
    tw, tb = taus(x, y, counts)
    for b, c in enumerate(counts.astype(int)):
        idx = np.repeat(np.arange(n), c)
        want_w = stats.weightedtau(x[idx], y[idx]).statistic
        want_b = stats.kendalltau(x[idx], y[idx]).statistic
        assert tw[b] == pytest.approx(want_w, abs=1e-12, nan_ok=True)
        assert tb[b] == pytest.approx(want_b, abs=1e-12, nan_ok=True)
        assert tw[b] == pytest.approx(pair_array_tau(x[idx][None], y[idx][None])[0], abs=1e-12,
                                      nan_ok=True)


def test_tau_b_of_a_resample_is_correlates_weighted_kendall():
    """Kendall tau-b of the weighted multiset, as correlate.kendall defines it."""
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=20), rng.normal(size=20)
    w = corr.cluster_weights(np.arange(20), 50, rng)
    assert taus(x, y, w)[1] == pytest.approx(corr.kendall(corr.Sample(x, y, None, w)), abs=1e-12)


def test_known_answers():
    x = np.arange(10.0)
    assert taus(x, x, np.ones((1, 10)))[0][0] == pytest.approx(1.0)
    assert taus(x, -x, np.ones((1, 10)))[1][0] == pytest.approx(-1.0)
    # one swap at the top weighs more than one swap at the bottom
    top, bottom = x.copy(), x.copy()
    top[[8, 9]], bottom[[0, 1]] = top[[9, 8]], bottom[[1, 0]]
    assert weighted_tau(top, x)[0] < weighted_tau(bottom, x)[0] < 1.0
    assert np.isnan(taus(np.ones(5), x[:5], np.ones((1, 5)))[0][0])  # constant: no tau


def test_tau_w_keeps_the_old_bootstrap_on_tied_resamples():
    """tau_w's replicates are the expanded resamples' scipy values, as the pair-array code had."""
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=12), rng.normal(size=12)
    got = tau_w(x, y, n_boot=30, seed=3)
    counts = corr.cluster_weights(np.arange(12), 30, np.random.default_rng(3)).astype(int)
    idx = np.stack([np.repeat(np.arange(12), c) for c in counts])
    assert got.replicates == pytest.approx(pair_array_tau(x[idx], y[idx]), abs=1e-12)
    assert got.estimate == pytest.approx(stats.weightedtau(x, y).statistic, abs=1e-12)


def test_max_t_bounds_equal_a_loop_and_cover_the_single_case():
    rng = np.random.default_rng(0)
    d = rng.normal(size=4)
    reps = d[:, None] + rng.normal(size=(4, 500)) * np.array([1, 2, 3, 4])[:, None]
    got = max_t_intervals(d, reps, one_sided=True)
    se = [np.std(r, ddof=1) for r in reps]
    tmax = [max((reps[c, b] - d[c]) / se[c] for c in range(4)) for b in range(500)]
    q = np.quantile(tmax, 0.95)
    assert got.q == pytest.approx(q)
    assert got.low == pytest.approx([d[c] - q * se[c] for c in range(4)])
    # one candidate: the bound is its own bootstrap-t bound; more candidates, a lower bound
    single = max_t_intervals(d[:1], reps[:1], one_sided=True)
    assert single.low[0] > got.low[0]
    two = max_t_intervals(d, reps)
    assert (two.low < got.low).all() and (two.high > d).all()


def test_aliases_are_one_candidate():
    f = pd.DataFrame({"cdnv/target": [1.0, 2.0, 3.0], "layer/layer4/cdnv/target": [1.0, 2.0, 3.0],
                      "nc1/target": [3.0, 2.0, 1.0]})
    assert aliases(f, list(f.columns)) == {"cdnv/target": ["layer/layer4/cdnv/target"],
                                           "nc1/target": []}


def test_view_renders_missing_bounds():
    rows = [{"candidate": "cdnv/target", "orientation": "lower is better", "transfer": "y",
             "method": m, "estimate": e, "ci_low": lo, "ci_high": hi, "aliases": "layer/x"}
            for m, e, lo, hi in (("weighted_tau", 0.5, 0.1, 0.8), ("spearman", 0.4, 0.0, 0.7),
                                 ("partial_spearman", 0.2, np.nan, np.nan),
                                 ("kendall", np.nan, np.nan, np.nan))]
    view = leaderboard_view(pd.DataFrame(rows), "y")
    assert view.loc[0, "partial_spearman"] == "0.20 [no interval]"
    assert view.loc[0, "kendall"] == "—"
    assert view.loc[0, "same series as"] == "layer/x"
