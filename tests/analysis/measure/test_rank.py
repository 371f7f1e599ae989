"""Effective rank (RankMe): against a slow numpy reference and on matrices of known rank."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analysis.errors import InputError
from analysis.measure.rank import effective_rank, singular_value_entropy


def _reference(x: np.ndarray) -> float:
    """exp(-sum p log p), p = sigma / sum(sigma), written out with a loop over the values."""
    sigma = np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)
    total = sum(sigma)
    entropy = 0.0
    for s in sigma:
        p = s / total
        if p > 0:
            entropy -= p * math.log(p)
    return math.exp(entropy)


@pytest.mark.parametrize(("n", "d"), [(200, 16), (12, 40), (64, 64), (1, 5)])
def test_matches_the_numpy_reference(n: int, d: int) -> None:
    rng = np.random.default_rng(n * d)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0, size=d) + rng.normal(size=d)
    assert effective_rank(torch.tensor(x, dtype=torch.float32)) == pytest.approx(
        _reference(x.astype(np.float32)), rel=1e-6)
    assert effective_rank(torch.tensor(x)) == pytest.approx(_reference(x), rel=1e-12)


@pytest.mark.parametrize("r", [1, 2, 5, 17])
def test_isotropic_subspace_of_dimension_r_has_rank_r(r: int) -> None:
    """Features spread equally over r orthonormal directions of a 32-dim space: r equal
    singular values, so p_k = 1/r and the effective rank is exactly r."""
    rng = np.random.default_rng(r)
    basis, _ = np.linalg.qr(rng.normal(size=(32, r)))  # (32, r) orthonormal columns
    coords, _ = np.linalg.qr(rng.normal(size=(100, r)))  # (100, r) orthonormal columns
    x = 3.0 * coords @ basis.T  # (100, 32), singular values all 3
    assert effective_rank(torch.tensor(x)) == pytest.approx(r, rel=1e-10)


def test_known_spectrum() -> None:
    """Singular values (2, 1, 1): p = (1/2, 1/4, 1/4), H = 1.5 ln 2, erank = 2^1.5."""
    x = torch.diag(torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))
    assert effective_rank(x) == pytest.approx(2**1.5, rel=1e-12)
    assert singular_value_entropy(torch.tensor([2.0, 1.0, 1.0, 0.0])) == pytest.approx(
        1.5 * math.log(2), rel=1e-12)


def test_scale_invariant_and_zero_is_nan() -> None:
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert effective_rank(1e-6 * x) == pytest.approx(effective_rank(x), rel=1e-9)
    assert math.isnan(effective_rank(torch.zeros(5, 3)))


@pytest.mark.parametrize("bad", [torch.zeros(5), torch.zeros(0, 3),
                                 torch.ones(3, 3, dtype=torch.int64),
                                 torch.tensor([[1.0, float("nan")]])])
def test_bad_input_is_one_clear_error(bad: torch.Tensor) -> None:
    with pytest.raises(InputError, match="effective_rank"):
        effective_rank(bad)
