"""The collapse statistics measured at every tap of the backbone (issue "Where in the network").

At each tap (a stage's output, globally average-pooled) the trial measures `LAYER_FAMILIES` of
`analysis.contract`: CDNV and its unbiased variant (Galanti et al. 2022), NC1 (Papyan et al. 2020)
and the effective rank (RankMe, Garrido et al. 2023). They are the penultimate layer's definitions
(`analysis.measure.collapse`), computed without the d x d within-class scatter the penultimate's
NC1 accumulates: `nc1_projected` projects the within-class deviations onto the between-class
eigenvectors instead, so a wide early layer (d larger than the number of images) costs N d K, not
N d^2, and no d x d float64 matrix is formed where d exceeds the number of samples.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from analysis.errors import InputError
from analysis.measure.collapse import cdnv
from analysis.measure.collapse_nc import between_class_eigen, centred_means
from analysis.measure.collapse_stats import ClassStats, ClassStatsAccumulator, check_features_labels
from analysis.measure.rank import effective_rank

_F64 = torch.float64
_CHUNK = 4096  # deviation rows projected at once


def nc1_projected(features: Any, labels: Any, stats: ClassStats, *,
                  rtol: float | None = None) -> float:
    """NC1 = Tr(S_W S_B^+) / K (Papyan et al. 2020) from the features, without S_W.

    With M the (K, d) centred means of the K included classes and M^T M = sum_k lambda_k v_k v_k^T
    (eigenpairs from the K x K matrix M M^T when K <= d, v_k = M^T u_k / sqrt(lambda_k); from
    M^T M itself when d < K), `analysis.measure.collapse_nc.nc1` shows

        NC1 = sum_k v_k^T S_W v_k / lambda_k,   S_W = (1/N) sum_x (x - mu_y)(x - mu_y)^T,

    and v^T S_W v = (1/N) sum_x ((x - mu_y) . v)^2: the deviations projected on the r <= K
    eigenvectors give NC1 exactly, at cost N d r and memory N r, with the same eigenvalue
    cut-off (rtol, default max(K, d) * eps) as the scatter route.

    Args:
        features: the (N, d) features `stats` summarises.
        labels: their (N,) labels.
        stats: their per-class statistics (track_scatter not needed).
        rtol: relative eigenvalue cut-off, as for `nc1`.
    """
    x, y = check_features_labels(features, labels, stats.num_classes, dim=stats.dim)
    stats = stats.to(x.device)
    eigen = between_class_eigen(centred_means(stats), rtol)
    if eigen is None:
        return float("nan")
    lam, v = eigen
    rows = stats.valid[y].nonzero().squeeze(1)
    proj = torch.zeros(v.shape[1], dtype=_F64, device=x.device)
    for start in range(0, rows.shape[0], _CHUNK):
        r = rows[start:start + _CHUNK]
        z = x.index_select(0, r).to(_F64) - stats.means.index_select(0, y.index_select(0, r))
        proj += (z @ v).square().sum(0)
    n = stats.counts[stats.valid].sum().to(_F64)
    return float((proj / n / lam).sum())


def tap_statistics(features: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """`LAYER_FAMILIES` of one tap on one split: cdnv, cdnv_unbiased, nc1, erank.

    Args:
        features: (N, d) pooled features of the tap.
        labels: (N,) labels in [0, num_classes).
        num_classes: classes of the split.

    Raises:
        InputError: misshapen or non-finite features, labels out of range.
    """
    if num_classes < 1:
        raise InputError(f"num_classes must be >= 1; got {num_classes}")
    x, y = check_features_labels(features, labels, num_classes)
    stats = ClassStatsAccumulator(num_classes, device=x.device).update(x, y).result()
    return {
        "cdnv": cdnv(stats).mean,
        "cdnv_unbiased": cdnv(stats, unbiased=True).mean,
        "nc1": nc1_projected(x, y, stats),
        "erank": effective_rank(x),
    }
