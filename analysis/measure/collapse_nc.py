"""Papyan, Han & Donoho (2020) neural-collapse measures NC1-NC4, as pure functions.

All of them use the included classes only (at least two samples, see `ClassStats.valid`), K of
them, and their centred means M (K x d, rows mu_c - mu_G). mu_G is the unweighted average of the
class means, so M has rank <= K - 1 and an exact simplex ETF gives cosines of exactly
-1/(K - 1); for balanced classes mu_G is also the global mean of Papyan et al.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from analysis.errors import InputError
from analysis.measure.collapse_stats import ClassStats, check_features_labels, upper_mask

_F64 = torch.float64


def centred_means(stats: ClassStats) -> Tensor:
    """(K, d) means of the included classes minus their average."""
    mu = stats.means[stats.valid]
    return mu - mu.mean(0)


def nc1(stats: ClassStats, *, rtol: float | None = None) -> float:
    """NC1 = Tr(S_W S_B^+) / K, within-class variability relative to between-class.

        S_W = (1/N) sum_c sum_{x in c} (x - mu_c)(x - mu_c)^T   (N: samples of included classes)
        S_B = (1/K) M^T M

    S_B^+ comes from the eigendecomposition of the smaller of M M^T (K x K) and M^T M (d x d):
    with M^T M = sum_k lambda_k v_k v_k^T, S_B^+ = K sum_k v_k v_k^T / lambda_k and

        NC1 = sum_k v_k^T S_W v_k / lambda_k

    over eigenvalues lambda_k > rtol * max(lambda); rtol defaults to max(K, d) * eps (the
    rule of numpy/torch pinv), which drops the null direction that centring creates. When
    K - 1 >= d, S_B has full rank d and this is Tr(S_W S_B^{-1}) / K. The K x K route avoids
    the d x d pseudo-inverse when there are few classes in a wide feature space.

    Args:
        stats: statistics accumulated with track_scatter=True.
        rtol: relative eigenvalue cut-off.
    """
    if stats.scatter is None:
        raise InputError("nc1 needs the within-class scatter: accumulate the statistics with "
                         "track_scatter=True")
    eigen = between_class_eigen(centred_means(stats), rtol)
    if eigen is None:
        return float("nan")
    lam, v = eigen
    s_w = stats.scatter / stats.counts[stats.valid].sum().to(_F64)
    return float(((s_w @ v) * v).sum(0).div(lam).sum())


def between_class_eigen(m: Tensor, rtol: float | None = None) -> tuple[Tensor, Tensor] | None:
    """The nonzero eigenpairs (lambda, v) of M^T M for the (K, d) centred class means M.

    From the K x K matrix M M^T when K <= d (v = M^T u / sqrt(lambda)), else from M^T M itself:
    the cheaper side. Eigenvalues at or below rtol * max (default max(K, d) * eps) are dropped.
    None when there are fewer than two classes or all class means coincide (no between-class
    spread to compare to). Shared by `nc1` and the scatter-free `layer_stats.nc1_projected`.
    """
    k, d = m.shape
    if k < 2:
        return None
    lam, u = torch.linalg.eigh(m @ m.T) if k <= d else torch.linalg.eigh(m.T @ m)
    tol = (max(k, d) * torch.finfo(_F64).eps if rtol is None else rtol) * lam.max()
    keep = lam > tol
    if not bool(keep.any()):
        return None
    lam, u = lam[keep], u[:, keep]
    return lam, (m.T @ u / lam.sqrt() if k <= d else u)  # v: (d, r) unit eigenvectors


def nc2_equinorm(stats: ClassStats) -> float:
    """NC2 equinorm: coefficient of variation of the centred class-mean norms.

        nc2_equinorm = Std_c(||mu_c - mu_G||) / Avg_c(||mu_c - mu_G||)

    Std with Bessel's correction (1/(K-1)), as in Papyan et al.'s released code (torch.std).
    0 for a simplex ETF.
    """
    norms = centred_means(stats).norm(dim=1)
    if norms.numel() < 2:
        return float("nan")
    return float(norms.std() / norms.mean())


def nc2_equiangle(stats: ClassStats) -> float:
    """NC2 equiangularity: distance of the pairwise cosines from the simplex-ETF value.

        nc2_equiangle = mean over pairs i<j of |cos(mu_i - mu_G, mu_j - mu_G) + 1/(K - 1)|

    0 for a simplex ETF. Pairs involving a centred mean of norm 0 have no cosine and are
    skipped.
    """
    m = centred_means(stats)
    k = m.shape[0]
    if k < 2:
        return float("nan")
    unit = m / m.norm(dim=1, keepdim=True)  # NaN rows where a norm is 0
    cos = (unit @ unit.T)[upper_mask(k, m.device)]
    dev = (cos + 1.0 / (k - 1)).abs()
    return float(dev[torch.isfinite(dev)].mean())


def nc3(stats: ClassStats, classifier_weight: Any) -> float:
    """NC3 self-duality: squared distance of the normalised classifier from the normalised means.

        nc3 = || W / ||W||_F - M / ||M||_F ||_F^2

    W: the (C, d) classifier weights' rows for the included classes (not centred); M: the
    centred means. The square, as in Papyan et al.'s Fig. 5 and released code; 0 when W is
    a positive multiple of M, at most 4.
    """
    w = torch.as_tensor(classifier_weight).detach()
    if w.shape != (stats.num_classes, stats.dim):
        raise InputError(f"classifier_weight must have shape (num_classes, d) = "
                         f"{(stats.num_classes, stats.dim)}; got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise InputError("classifier_weight contains non-finite values (NaN or inf)")
    w = w.to(device=stats.means.device, dtype=_F64)[stats.valid]
    m = centred_means(stats)
    if m.shape[0] < 2:
        return float("nan")
    diff = w / w.norm() - m / m.norm()
    return float((diff * diff).sum())


def nc4(features: Any, logits: Any, centres: Any, *, present: Tensor | None = None,
        chunk_rows: int = 8192) -> float:
    """NC4: share of samples where the classifier and the nearest class centre disagree.

        nc4 = (1/N) #{x : argmax_c logits(x)_c != argmin_c ||x - centre_c||}

    Distances are computed in float64 after subtracting the centres' average (exact enough
    for collapsed features; a float32 expansion is not).

    Args:
        features: (N, d) features.
        logits: (N, C) classifier outputs for them.
        centres: (C, d) class centres (e.g. class means of the training split).
        present: (C,) bool, classes that have a centre; the others are never nearest.
        chunk_rows: rows per chunk (bounds the chunk x C distance matrix).
    """
    x = torch.as_tensor(features)
    x, _ = check_features_labels(x, torch.zeros(x.shape[0] if x.ndim else 0, dtype=torch.int64))
    z = torch.as_tensor(logits).detach().to(x.device)
    mu = torch.as_tensor(centres).detach().to(device=x.device, dtype=_F64)
    if z.ndim != 2 or z.shape[0] != x.shape[0]:
        raise InputError(f"logits must have shape (N, C) with N={x.shape[0]} feature rows; "
                         f"got {tuple(z.shape)}")
    if mu.ndim != 2 or mu.shape != (z.shape[1], x.shape[1]):
        raise InputError(f"centres must have shape (C, d) = {(z.shape[1], x.shape[1])} "
                         f"(C from the logits, d from the features); got {tuple(mu.shape)}")
    if not (bool(torch.isfinite(z).all()) and bool(torch.isfinite(mu).all())):
        raise InputError("logits and centres must be finite; got NaN or inf")
    if x.shape[0] == 0:
        return float("nan")
    has = torch.ones(mu.shape[0], dtype=torch.bool, device=x.device)
    if present is not None:
        has = present.to(x.device)
    origin = mu[has].mean(0)
    mu = mu - origin
    mu_sq = torch.where(has, (mu * mu).sum(1), torch.inf)
    disagree = 0
    for start in range(0, x.shape[0], chunk_rows):
        xc = x[start:start + chunk_rows].detach().to(_F64) - origin
        dist = (xc * xc).sum(1, keepdim=True) - 2.0 * xc @ mu.T + mu_sq
        pred = z[start:start + chunk_rows].argmax(1)
        disagree += int((dist.argmin(1) != pred).sum())
    return disagree / x.shape[0]
