"""The CDNV bound on NCC error: its formula, its input checks, and that it holds on clusters."""

from __future__ import annotations

import math

import pytest
import torch

from analysis.measure.bound import BOUND_CONSTANT, ncc_error_bound
from analysis.measure.fewshot import evaluate_episodes, sample_episodes
from tests.analysis.measure.test_fewshot_ncc import _clusters


def test_error_bound_formula_and_validation() -> None:
    assert BOUND_CONSTANT == 8.0
    assert ncc_error_bound(0.1, 5, 5) == pytest.approx(8 * 4 * 1.2 * 0.1)
    assert ncc_error_bound(0.1, 5, 1) == pytest.approx(8 * 4 * 2 * 0.1)
    assert ncc_error_bound(0.0, 20, 1) == 0.0
    assert ncc_error_bound(math.inf, 5, 1) == math.inf
    assert ncc_error_bound(0.1, 10, 5) > ncc_error_bound(0.1, 5, 5) > ncc_error_bound(0.1, 5, 20)
    for args, match in [
        ((-0.1, 5, 1), "cdnv must be a number >= 0"),
        ((math.nan, 5, 1), "cdnv must be a number >= 0"),
        ((0.1, 1, 1), "n_way must be an integer >= 2"),
        ((0.1, 5, 0), "k_shot must be an integer >= 1"),
        ((0.1, 5.0, 1), "n_way must be an integer"),
    ]:
        with pytest.raises(ValueError, match=match):
            ncc_error_bound(*args)  # type: ignore[arg-type]


def _pool_cdnv(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over class pairs of (Var_i + Var_j) / (2 ||mu_i - mu_j||^2), biased variances."""
    classes = labels.unique()
    mu = torch.stack([x[labels == c].mean(0) for c in classes])
    var = torch.stack(
        [((x[labels == c] - m) ** 2).sum(1).mean() for c, m in zip(classes, mu, strict=True)]
    )
    i, j = torch.triu_indices(len(classes), len(classes), 1)
    return float(((var[i] + var[j]) / (2 * ((mu[i] - mu[j]) ** 2).sum(1))).mean())


@pytest.mark.parametrize(("n_way", "k_shot", "noise"), [(5, 1, 0.08), (5, 5, 0.1), (2, 1, 0.1)])
def test_error_bound_holds_empirically(n_way: int, k_shot: int, noise: float) -> None:
    # The bound is on the expected NCC error over episodes drawn as the bank draws them, with the
    # pool's CDNV of the features the classifier sees (raw features for ncc_raw). 2-D clusters
    # so that errors happen while the bound is still below 1 (it is a Markov-type bound, loose
    # by a factor 20-60 here).
    x, labels = _clusters(12, 20, 2, noise=noise, seed=n_way + k_shot)
    bank = sample_episodes(labels, n_way=n_way, k_shot=k_shot, q_query=10, episodes=3000, seed=0)
    error = 1.0 - evaluate_episodes(x, bank, "ncc_raw").mean
    bound = ncc_error_bound(_pool_cdnv(x, labels), n_way, k_shot)
    assert 0.0 < error <= bound < 1.0  # the bound is informative here, and holds
