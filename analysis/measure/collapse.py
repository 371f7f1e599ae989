"""Neural-collapse metrics: CDNV (Galanti et al. 2022) and NC1-NC4 (Papyan et al. 2020).

Every metric is a pure function of a `ClassStats` (see `analysis.measure.collapse_stats`, which
accumulates it streaming), plus the features themselves where a metric needs more than
per-class first and second moments (directional CDNV, NC4). `collapse_metrics` computes the
whole set for one split, as the trainable reports it. The NC1-NC4 definitions live in
`analysis.measure.collapse_nc`.

Conventions shared by every metric:
- Only classes with at least two samples take part (a variance needs two); the others are
  counted in `excluded_classes`, never averaged in.
- Pairs of classes whose means coincide (||mu_i - mu_j|| <= 1e-12 max(||mu_i||, ||mu_j||), i.e.
  equal up to float64 rounding) have no CDNV; they are counted in `excluded_pairs`.
- Pairwise distances come from the Gram matrix of the class means centred on their average
  (||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b loses the digits of a large shared offset, which
  centring removes); pairs whose Gram distance is still below 1e-4 of their centred squared
  norms (means close to each other) are recomputed directly from the mean difference, so every
  distance keeps close to full float64 precision and the direct pass stays small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from analysis.errors import InputError
from analysis.measure.collapse_nc import nc1, nc2_equiangle, nc2_equinorm, nc3, nc4
from analysis.measure.collapse_stats import (
    ClassStats,
    ClassStatsAccumulator,
    check_features_labels,
    upper_mask,
)

__all__ = [
    "CDNVResult",
    "ClassStats",
    "ClassStatsAccumulator",
    "cdnv",
    "cdnv_directional",
    "collapse_metrics",
    "nc1",
    "nc2_equiangle",
    "nc2_equinorm",
    "nc3",
    "nc4",
    "pairwise_sq_distances",
]

_F64 = torch.float64
REFINE_RTOL = 1e-4  # Gram distances below this share of sq norms are recomputed directly
COINCIDE_RTOL = 1e-12  # means this close (relative to their norms) are the same point
_REFINE_CHUNK = 4096  # pairs recomputed at once (chunk x d float64)


@dataclass(frozen=True)
class CDNVResult:
    """Pairwise class-distance normalised variances and their summaries.

    Attributes:
        mean: the mean over included pairs (the CDNV).
        median: the median over the same pairs (i<j; ordered pairs i != j if asymmetric).
        worst: (C,) each class's largest pair value, NaN for excluded classes.
        worst_partner: (C,) the class index of that pair's other class, -1 where none.
        matrix: (C, C) pair values (NaN on the diagonal and for excluded classes and pairs),
            only when asked for.
        num_pairs: unordered pairs averaged.
        excluded_classes: classes with fewer than two samples.
        excluded_pairs: unordered pairs of included classes with coincident means.
    """

    mean: float
    median: float
    worst: Tensor
    worst_partner: Tensor
    matrix: Tensor | None
    num_pairs: int
    excluded_classes: int
    excluded_pairs: int


def pairwise_sq_distances(means: Tensor) -> Tensor:
    """(K, K) squared distances ||mu_i - mu_j||^2 between the rows of `means` (float64).

    From the Gram matrix of the centred means (one matmul, no loop over pairs); pairs closer
    than REFINE_RTOL of their centred squared norms are recomputed as ||mu_i - mu_j||^2 from
    the raw means, in chunks, because there the Gram formula cancels away most digits.
    """
    mu = means.to(_F64)
    c = mu - mu.mean(0)
    gram = c @ c.T
    sq = gram.diagonal()
    scale = sq[:, None] + sq[None, :]
    dist = (scale - 2.0 * gram).clamp_(min=0.0)
    dist.fill_diagonal_(0.0)
    rows, cols = ((dist <= REFINE_RTOL * scale) & upper_mask(dist.shape[0], dist.device)).nonzero(
        as_tuple=True)
    for start in range(0, rows.shape[0], _REFINE_CHUNK):
        i, j = rows[start:start + _REFINE_CHUNK], cols[start:start + _REFINE_CHUNK]
        diff = mu.index_select(0, i) - mu.index_select(0, j)
        exact = (diff * diff).sum(1)
        dist[i, j] = exact
        dist[j, i] = exact
    return dist


def _pair_mask(means: Tensor, dist: Tensor) -> Tensor:
    """(K, K) bool: off-diagonal pairs whose means do not coincide."""
    norm2 = (means * means).sum(1)
    bound = COINCIDE_RTOL**2 * torch.maximum(norm2[:, None], norm2[None, :])
    keep = dist > bound
    keep.fill_diagonal_(False)
    return keep


def _median(values: Tensor) -> float:
    """The median, the mean of the two middle values for an even count (selection, no sort)."""
    n = values.numel()
    if n == 0:
        return float("nan")
    lo = torch.kthvalue(values, (n + 1) // 2).values
    hi = lo if n % 2 else torch.kthvalue(values, n // 2 + 1).values
    return float((lo + hi) / 2)


def _summarise(values: Tensor, keep: Tensor, idx: Tensor, num_classes: int, *,
               asymmetric: bool, return_matrix: bool, excluded_classes: int) -> CDNVResult:
    """Mean, median, worst pair per class and the matrix of a (K, K) pair-value matrix."""
    k = values.shape[0]
    v = torch.where(keep, values, torch.nan)
    upper = keep if asymmetric else keep & upper_mask(k, keep.device)
    vals = v[upper]
    mean = float(vals.mean()) if vals.numel() else float("nan")
    if k:
        filled = v.nan_to_num(nan=-torch.inf)
        best, arg = filled.amax(1), filled.argmax(1)
    else:
        best, arg = v.new_zeros(0), idx.new_zeros(0)
    has = torch.isfinite(best)
    worst = torch.full((num_classes,), torch.nan, dtype=_F64, device=v.device)
    worst[idx] = torch.where(has, best, torch.nan)
    partner = torch.full((num_classes,), -1, dtype=torch.int64, device=v.device)
    partner[idx] = torch.where(has, idx[arg], -1)
    matrix = None
    if return_matrix:
        matrix = torch.full((num_classes, num_classes), torch.nan, dtype=_F64, device=v.device)
        matrix[idx[:, None], idx[None, :]] = v
    off_diag = k * (k - 1) // 2
    num_pairs = int((keep & upper_mask(k, keep.device)).sum())
    return CDNVResult(mean, _median(vals), worst, partner, matrix, num_pairs,
                      excluded_classes, off_diag - num_pairs)


def cdnv(stats: ClassStats, *, unbiased: bool = False, asymmetric: bool = False,
         return_matrix: bool = False) -> CDNVResult:
    """Class-distance normalised variance (Galanti, György & Hutter 2022, Def. 1).

        CDNV = mean over class pairs i<j of (Var_i + Var_j) / (2 ||mu_i - mu_j||^2),
        Var_c = (1/N_c) sum_{x in c} ||x - mu_c||^2     (biased, the paper's definition)

    Args:
        stats: per-class statistics.
        unbiased: use Var_c = (1/(N_c - 1)) sum ||x - mu_c||^2 instead (metric cdnv_unbiased:
            comparable across splits with different numbers of samples per class).
        asymmetric: pair value Var_i / ||mu_i - mu_j||^2 for the ordered pair (i, j): the
            matrix, median and worst pairs change; the mean over ordered pairs equals the
            symmetric mean exactly.
        return_matrix: also return the (C, C) matrix of pair values.
    """
    idx = stats.valid.nonzero().squeeze(1)
    mu = stats.means.index_select(0, idx)
    var = stats.variances(unbiased=unbiased).index_select(0, idx)
    dist = pairwise_sq_distances(mu)
    keep = _pair_mask(mu, dist)
    num = var[:, None] if asymmetric else (var[:, None] + var[None, :]) / 2.0
    return _summarise(num / dist, keep, idx, stats.num_classes, asymmetric=asymmetric,
                      return_matrix=return_matrix, excluded_classes=stats.excluded_classes)


def cdnv_directional(features: Any, labels: Any, stats: ClassStats, *,
                     unbiased: bool = False, asymmetric: bool = False,
                     return_matrix: bool = False, chunk_rows: int = 8192) -> CDNVResult:
    """Directional CDNV: within-class variance along the direction to the other class only.

        value(i, j) = u_ij^T Sigma_i u_ij / ||mu_i - mu_j||^2,  u_ij = (mu_i - mu_j)/||mu_i - mu_j||
        cdnv_dir    = mean over pairs i<j of (value(i, j) + value(j, i)) / 2

    Sigma_i = (1/N_i) sum_{x in i} (x - mu_i)(x - mu_i)^T (biased; 1/(N_i - 1) if unbiased).
    The symmetrisation mirrors CDNV's (Var_i + Var_j)/2; `asymmetric` keeps value(i, j) as is.
    Isotropic noise of variance s^2 per coordinate gives value = s^2/||mu_i - mu_j||^2, i.e.
    d times less than CDNV: only the spread towards the other class can cause confusion.

    One pass over the features, batched: for a chunk Z of deviations x - mu_y it forms
    P = Z (mu_c)^T (chunk x K), whose differences P[x, y] - P[x, j] = (x - mu_y).(mu_y - mu_j)
    are squared and summed per class. Each difference cancels only as far as mu_i and mu_j are
    close relative to their norms (relative error about 1e-16 ||mu|| / ||mu_i - mu_j||).

    Args:
        features: the (N, d) features `stats` was computed from.
        labels: their (N,) labels.
        stats: their statistics (same classes, same counts; checked).
        unbiased, asymmetric, return_matrix: as for `cdnv`.
        chunk_rows: feature rows per chunk (bounds the chunk x K working matrix).
    """
    x, y = check_features_labels(features, labels, stats.num_classes, dim=stats.dim)
    stats = stats.to(x.device)
    if not torch.equal(torch.bincount(y, minlength=stats.num_classes), stats.counts):
        raise InputError("stats do not match these features: their per-class counts differ; "
                         "pass the ClassStats computed from the same features and labels")
    idx = stats.valid.nonzero().squeeze(1)
    k = idx.shape[0]
    pos = torch.full((stats.num_classes,), -1, dtype=torch.int64, device=x.device)
    pos[idx] = torch.arange(k, device=x.device)
    mu = stats.means.index_select(0, idx)
    centred = mu - mu.mean(0)
    proj = torch.zeros(k, k, dtype=_F64, device=x.device)  # sum_x ((x - mu_i).(mu_i - mu_j))^2
    rows = (pos[y] >= 0).nonzero().squeeze(1)
    for start in range(0, rows.shape[0], chunk_rows):
        r = rows[start:start + chunk_rows]
        yc = y.index_select(0, r)
        z = x.index_select(0, r).to(_F64).sub_(stats.means.index_select(0, yc))
        p = z @ centred.T
        own = pos.index_select(0, yc)
        proj.index_add_(0, own, (p.gather(1, own[:, None]) - p).square_())
    n = stats.counts.index_select(0, idx).to(_F64) - (1.0 if unbiased else 0.0)
    spread = proj / n[:, None]  # (mu_i - mu_j)^T Sigma_i (mu_i - mu_j)
    dist = pairwise_sq_distances(mu)
    keep = _pair_mask(mu, dist)
    num = spread if asymmetric else (spread + spread.T) / 2.0
    return _summarise(num / dist.square(), keep, idx, stats.num_classes,
                      asymmetric=asymmetric, return_matrix=return_matrix,
                      excluded_classes=stats.excluded_classes)


def collapse_metrics(features: Any, labels: Any, *, num_classes: int | None = None,
                     classifier_weight: Any = None, logits: Any = None,
                     means_for_nc4: Any = None) -> dict[str, float]:
    """Every collapse metric of one split (the keys analysis/contract.py builds names from).

    Args:
        features: (N, d) float features (float32 on CPU or CUDA, typically).
        labels: (N,) integer labels.
        num_classes: C; default: rows of classifier_weight, else columns of logits, else
            max(label) + 1.
        classifier_weight: (C, d) last-layer weights; adds nc3.
        logits: (N, C) classifier outputs for these features; adds nc4.
        means_for_nc4: (C, d) class centres for NC4's nearest-centre rule (e.g. the training
            split's); default: this split's own class means.

    Returns:
        cdnv, cdnv_dir, cdnv_unbiased, cdnv_median, nc1, nc2_equinorm, nc2_equiangle,
        nc3 (with classifier_weight), nc4 (with logits), excluded_classes, excluded_pairs.
        Metrics that have no included class pair are NaN.
    """
    if num_classes is None and classifier_weight is not None:
        num_classes = int(torch.as_tensor(classifier_weight).shape[0])
    if num_classes is None and logits is not None:
        shape = torch.as_tensor(logits).shape
        num_classes = int(shape[1]) if len(shape) == 2 else None
    x, y = check_features_labels(features, labels, num_classes)
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.numel() else 1
    acc = ClassStatsAccumulator(num_classes, track_scatter=True, device=x.device)
    stats = acc.update(x, y).result()
    plain = cdnv(stats)
    out = {
        "cdnv": plain.mean,
        "cdnv_dir": cdnv_directional(x, y, stats).mean,
        "cdnv_unbiased": cdnv(stats, unbiased=True).mean,
        "cdnv_median": plain.median,
        "nc1": nc1(stats),
        "nc2_equinorm": nc2_equinorm(stats),
        "nc2_equiangle": nc2_equiangle(stats),
    }
    if classifier_weight is not None:
        out["nc3"] = nc3(stats, classifier_weight)
    if logits is not None:
        if means_for_nc4 is None:
            out["nc4"] = nc4(x, logits, stats.means, present=stats.counts > 0)
        else:
            out["nc4"] = nc4(x, logits, means_for_nc4)
    out["excluded_classes"] = float(plain.excluded_classes)
    out["excluded_pairs"] = float(plain.excluded_pairs)
    return out
