"""Effective rank of a feature matrix: RankMe (Garrido, Balestriero, Najman & LeCun, ICML 2023).

"RankMe: Assessing the Downstream Performance of Pretrained Self-Supervised Representations by
Their Rank" scores an embedding by the effective rank of Roy & Vetterli (EUSIPCO 2007) of the
(N, d) matrix of its features: how many directions the features really use. A collapsed layer
(every class squeezed onto its mean, Papyan et al. 2020) uses at most C - 1 of them; a layer that
keeps within-class detail uses more. Per layer, it says where the network compresses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from analysis.errors import InputError

_F64 = torch.float64


def singular_value_entropy(singular_values: Tensor) -> float:
    """Shannon entropy (nats) of singular values normalised to sum 1, with 0 log 0 = 0.

        p_k = sigma_k / sum_j sigma_j,   H = - sum_k p_k log p_k
    """
    s = singular_values.to(_F64).clamp(min=0.0)
    total = s.sum()
    if not bool(total > 0):
        return float("nan")
    p = s / total
    terms = torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))
    return float(-terms.sum())


def effective_rank(features: Any) -> float:
    """RankMe effective rank of (N, d) features (Garrido et al., ICML 2023, Eq. 1).

        sigma = singular values of the (N, d) feature matrix Z (not centred, as in RankMe)
        p_k   = sigma_k / sum_j sigma_j
        erank = exp(- sum_k p_k log p_k)

    1 <= erank <= min(N, d). Features spread equally over an r-dimensional subspace (r equal
    non-zero singular values) give exactly r. RankMe adds eps = 1e-7 to p_k to keep log finite;
    here 0 log 0 = 0 instead, which gives the same value up to ~1e-6 and an exact known answer.
    The singular values come from float64 SVD of Z, whose cost is min(N, d)^2 max(N, d): no
    d x d matrix is formed when d exceeds N.

    Args:
        features: (N, d) finite floating-point features, N >= 1.

    Returns:
        The effective rank; NaN when every feature is 0 (no direction is used).

    Raises:
        InputError: not a 2-D floating array, empty, or not finite.
    """
    z = torch.as_tensor(features)
    if z.ndim != 2 or not z.is_floating_point() or z.shape[0] == 0 or z.shape[1] == 0:
        raise InputError("effective_rank needs a non-empty 2-D floating (N, d) feature matrix; "
                         f"got shape {tuple(z.shape)}, dtype {z.dtype}")
    if not bool(torch.isfinite(z).all()):
        raise InputError("effective_rank: the features contain NaN or inf; all must be finite")
    s = torch.linalg.svdvals(z.detach().to(_F64))
    return float(torch.exp(torch.tensor(singular_value_entropy(s), dtype=_F64)))
