"""Weighted Kendall tau_w and Kendall tau-b on many bootstrap resamples, by sorting.

A bootstrap resample of trials is a multiset: trial i drawn c_i times. Every statistic here
is the one scipy computes on the expanded resample (`x[idx], y[idx]` with i repeated c_i
times), but written with the counts, so B resamples cost O(B n log n) time and O(B n) memory
instead of the (B, n, n) pair arrays of the direct formula.

Definitions (Vigna, "A weighted correlation index for rankings with ties", WWW 2015; scipy's
`weightedtau` defaults: additive hyperbolic weigher, rank by the decreasing lexicographic
order). Over the N = sum c draws a, b with signs s_x(a, b) = sign(x_a - x_b):

    tau_w = sum_{a<b} (w_a + w_b) s_x s_y / sqrt(sum_{a<b} (w_a + w_b) s_x^2
                                                  * sum_{a<b} (w_a + w_b) s_y^2),

w_a = 1 / (r_a + 1), r_a the rank of draw a by decreasing (x, y) (0 = top); scipy averages this
with the same formula ranked by (y, x), each half clipped to [-1, 1]. With constant weights it
is Kendall's tau-b (Kendall 1945).

Algorithm. sum_{a<b} (w_a + w_b) s_x s_y = sum_a w_a S(a) with S(a) = sum_b s_x(a, b) s_y(a, b),
which depends only on a's trial i: S_i = sum_j c_j s_x(i, j) s_y(i, j). S is linear in the
counts with a fixed geometry, so it is computed for all B rows at once on a merge-sort tree
over the trials ordered by (x, y): at level k every trial meets the sibling block of 2^k trials
on its other side, and the counts of that block below / equal to its y come from one cumulative
sum per level (the per-element form of the merge-sort inversion count, Knight 1966, that
scipy's weightedtau runs one sample at a time). The copies of trial i hold consecutive ranks
r..r+c_i-1, so their summed weight is H(r + c_i) - H(r) with H the harmonic numbers; the
denominators are sum_a w_a (N - size of a's tie group in x).
"""

from __future__ import annotations

import numpy as np

_DENSE_BLOCK = 32  # leaves per dense bottom block: B x n x 32 flops replace 5 tree levels


def _dense_rank(v: np.ndarray) -> np.ndarray:
    return np.unique(v, return_inverse=True)[1].reshape(-1)


class Geometry:
    """The fixed part of the computation for one (x, y): orders, tie groups and the tree."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        x, y = np.asarray(x, float), np.asarray(y, float)
        if x.shape != y.shape or x.ndim != 1 or not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("x, y: need two finite 1-D arrays of the same length")
        n = self.n = len(x)
        self.x_group, self.y_group = _dense_rank(x), _dense_rank(y)
        self.xy_group = _dense_rank(self.x_group * (n + 1.0) + self.y_group)
        self.by_xy = np.lexsort((y, x))[::-1]  # decreasing lexicographic (x, y)
        self.by_yx = np.lexsort((x, y))[::-1]
        self.pos = np.lexsort((y, x))  # the tree's leaves: increasing (x, y)
        depth = max(1, int(np.ceil(np.log2(max(n, 2)))))
        size = self.size = 1 << depth
        yv = np.full(size, n, dtype=np.int64)  # padding leaves (count 0) sort last
        yv[:n] = self.y_group[self.pos]
        self.y_ties = len(np.unique(yv[:n])) < n
        # levels below `dense`: one (size/m, m, m) sign matrix, applied by batched matmul
        m = self.block = min(size, _DENSE_BLOCK)
        yb = yv.reshape(-1, m)
        ib = np.arange(m)
        self.dense = (np.sign(ib[:, None] - ib[None, :])[None]
                      * np.sign(yb[:, :, None] - yb[:, None, :])).astype(np.float32)
        self.levels = []
        p = np.arange(size)
        for k in range(int(np.log2(m)), depth):
            h, blk = 1 << k, p >> k
            perm = np.lexsort((yv, blk))  # each block of 2^k leaves sorted by y
            key = blk[perm] * (size + 1) + yv[perm]
            sib = blk ^ 1
            q = sib * (size + 1) + yv
            below = np.searchsorted(key, q, "left") - (sib << k) + sib * (h + 1)
            upto = np.searchsorted(key, q, "right") - (sib << k) + sib * (h + 1)
            self.levels.append((perm, below, upto,
                                np.where(sib < blk, 1.0, -1.0).reshape(-1, h).astype(np.float32)))

    def concordance(self, counts: np.ndarray) -> np.ndarray:
        """S (B, n): S[b, i] = sum_j counts[b, j] sign(x_i - x_j) sign(y_i - y_j).

        Counts and partial sums are whole numbers below 2^24, exact in float32.
        """
        b, size, m = counts.shape[0], self.size, self.block
        leaves = np.zeros((b, size), dtype=np.float32)
        leaves[:, :self.n] = counts[:, self.pos]
        blocks = leaves.reshape(b, -1, m).transpose(1, 0, 2)
        s = np.matmul(blocks, self.dense.transpose(0, 2, 1)).transpose(1, 0, 2).reshape(b, size)
        for perm, below, upto, sgn in self.levels:
            h = sgn.shape[1]
            cs = np.zeros((b, size // h, h + 1), dtype=np.float32)
            np.cumsum(leaves[:, perm].reshape(b, -1, h), axis=2, out=cs[:, :, 1:])
            other = cs[:, :, h].reshape(b, -1, 2)[:, :, ::-1].reshape(b, -1, 1)  # sibling total
            flat = cs.reshape(b, -1)
            part = (flat[:, below] + flat[:, upto]) if self.y_ties else 2 * flat[:, below]
            s += (sgn * (part.reshape(b, -1, h) - other)).reshape(b, size)
        # the tree orders ties in x by y: such pairs add c_j [y_i != y_j]; take them out
        s_pts = np.empty((b, self.n))
        s_pts[:, self.pos] = s[:, :self.n]
        return s_pts - (_group_sum(counts, self.x_group) - _group_sum(counts, self.xy_group))


def _group_sum(counts: np.ndarray, group: np.ndarray) -> np.ndarray:
    """(B, n): for each point, the total count of its tie group (group: dense ids 0..g-1)."""
    if int(group.max()) + 1 == counts.shape[1]:  # no ties: every group is one point
        return counts
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(group[order]) != 0])
    return np.add.reduceat(counts[:, order], starts, axis=1)[:, group]


_HARMONIC = np.zeros(1)


def _harmonic(m: int) -> np.ndarray:
    """H[0..m], H[k] = sum_{j=1}^k 1/j (cached, grown on demand)."""
    global _HARMONIC
    if len(_HARMONIC) <= m:
        _HARMONIC = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, 2 * m + 2))])
    return _HARMONIC


def _half(counts: np.ndarray, order: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """tau_w ranked by `order` (decreasing lexicographic); counts: (B, n) integers; parts:
    (B, n, 3) = S, N - x tie-group size, N - y tie-group size."""
    c = counts[:, order]
    cum = np.cumsum(c, axis=1)
    harmonic = _harmonic(int(cum[:, -1].max()))
    w = np.empty(counts.shape)
    w[:, order] = harmonic[cum] - harmonic[cum - c]
    num, vx, vy = (w[:, None, :] @ parts)[:, 0, :].T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(num / np.sqrt(vx * vy), -1.0, 1.0)


def taus(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tau_w, tau_b), each (B,), of the resamples holding point i counts[b, i] times.

    Args:
        x, y: (n,) finite values of the n trials.
        counts: (B, n) non-negative integer draw counts (a row of ones: the sample itself).

    Returns:
        scipy.stats.weightedtau(x[idx], y[idx]).statistic and scipy.stats.kendalltau(x[idx],
        y[idx]).statistic for each row's expanded draws idx; NaN where x or y is constant.
    """
    counts = np.atleast_2d(np.asarray(counts, float))
    if counts.shape[1] != len(x) or (counts < 0).any():
        raise ValueError(f"counts: need shape (B, {len(x)}) of non-negative draw counts")
    geo = Geometry(x, y)
    total = counts.sum(1)[:, None]
    parts = np.stack([geo.concordance(counts), total - _group_sum(counts, geo.x_group),
                      total - _group_sum(counts, geo.y_group)], axis=2)
    whole = counts.astype(np.int64)
    tw = (_half(whole, geo.by_xy, parts) + _half(whole, geo.by_yx, parts)) / 2
    num, vx, vy = (counts[:, None, :] @ parts)[:, 0, :].T
    with np.errstate(invalid="ignore", divide="ignore"):
        return tw, np.clip(num / np.sqrt(vx * vy), -1.0, 1.0)


def weighted_tau(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """scipy.stats.weightedtau(x[b], y[b]).statistic for every row b of (B, n) arrays."""
    x, y = np.atleast_2d(x), np.atleast_2d(y)
    ones = np.ones((1, x.shape[1]))
    return np.array([taus(a, b, ones)[0][0] for a, b in zip(x, y, strict=True)])
