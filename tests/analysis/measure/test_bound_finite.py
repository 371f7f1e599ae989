"""The Cantelli bound under the episode bank's sampling (without replacement, query apart from
the supports), against the enumeration of every draw and on the issue's constructed example.

The enumeration is the slow obvious reference for docs/bounds.md: every ordered (k+1)-tuple of
distinct images of class i (k supports, then the query) against every k-subset of class j.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from analysis.errors import InputError
from analysis.measure.bound import (
    cantelli_error_bound,
    cantelli_pair_terms,
    pair_moments,
    projection_moments,
)
from analysis.measure.fewshot import evaluate_episodes, sample_episodes


def enumerate_w(xi: np.ndarray, xj: np.ndarray, k: int) -> np.ndarray:
    """W = (q - (m_i + m_j)/2) . (m_i - m_j) over every equally likely draw."""
    out = []
    for own in itertools.permutations(range(len(xi)), k + 1):
        mi, q = xi[list(own[:k])].mean(0), xi[own[k]]
        for other in itertools.combinations(range(len(xj)), k):
            mj = xj[list(other)].mean(0)
            out.append((q - (mi + mj) / 2) @ (mi - mj))
    return np.array(out)


def two_classes(rng: np.random.Generator, ni: int, nj: int, dim: int = 3):
    """Skewed, unequal classes: one far image in i, a shifted image in j."""
    xi = rng.normal(size=(ni, dim)) + np.eye(dim)[0] * 2
    xi[0] *= 3
    xj = rng.normal(size=(nj, dim)) * rng.uniform(0.3, 1.5)
    xj[1] += [1.0, 2.0, 0.0][:dim]
    return xi, xj


def moments_of(xi: np.ndarray, xj: np.ndarray, k: int) -> tuple[float, float, float]:
    x = torch.as_tensor(np.vstack([xi, xj]))
    y = torch.as_tensor([0] * len(xi) + [1] * len(xj))
    m = pair_moments(x, y)
    mean, var = projection_moments(m, k)
    return float(mean[0, 1]), float(var[0, 1]), float(cantelli_pair_terms(m, k)[0, 1])


@pytest.mark.parametrize(("ni", "nj", "k"), [(5, 4, 2), (4, 5, 3), (6, 6, 1), (3, 2, 1),
                                             (7, 5, 3), (5, 6, 4)])
def test_mean_and_variance_equal_the_enumeration_of_every_draw(ni, nj, k):
    """Exact, not approximate: fails on the with-replacement moments (N_c finite and small)."""
    xi, xj = two_classes(np.random.default_rng(ni * 10 + k), ni, nj)
    w = enumerate_w(xi, xj, k)
    mean, var, _ = moments_of(xi, xj, k)
    assert mean == pytest.approx(w.mean(), rel=1e-9, abs=1e-12)
    assert var == pytest.approx(w.var(), rel=1e-9)


def test_pair_term_bounds_the_exact_pair_error_on_random_small_classes():
    """c_ij >= P(W <= 0), exactly enumerated, over 40 random populations (some with an image
    near the other class, where Cantelli is nearly tight)."""
    rng = np.random.default_rng(7)
    for _ in range(40):
        n = int(rng.integers(3, 7))
        k = int(rng.integers(1, n))
        xi = rng.normal(size=(n, 2)) * rng.uniform(0.05, 1)
        xj = rng.normal(size=(n, 2)) * rng.uniform(0.05, 1) + [rng.uniform(0.5, 3), 0]
        if rng.uniform() < 0.5:
            xi[0] = xj.mean(0) * rng.uniform(0.4, 0.7)
        exact = float(np.mean(enumerate_w(xi, xj, k) <= 0))
        assert moments_of(xi, xj, k)[2] >= exact - 1e-12


def constructed_example(classes: int = 6, per: int = 20, past: float = 0.501,
                        noise: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Issue 20's example: classes in partner pairs, each with per - 1 tight images and one just
    past the midpoint towards its partner (so a query of it is misclassified whenever the partner
    is in the episode: the 5w5s error is (4/5) (1/20) = 0.04 without replacement)."""
    gen = torch.Generator().manual_seed(0)
    mu = torch.eye(classes, dtype=torch.float64)
    y = torch.arange(classes).repeat_interleave(per)
    x = mu[y] + noise * torch.randn(len(y), classes, generator=gen, dtype=torch.float64)
    partner = torch.arange(classes) ^ 1
    x[torch.arange(classes) * per] = mu + past * (mu[partner] - mu)
    return x, y


def test_bound_holds_on_the_constructed_example_through_the_evaluation():
    """The primary `ncc` (centred, L2-normalised) on the bank's 5w5s 15-query episodes, which
    use all 20 images of a class, with the bound on the features that classifier sees."""
    x, y = constructed_example()
    center = x.mean(0)
    bank = sample_episodes(y, n_way=5, k_shot=5, q_query=15, episodes=20_000, seed=0)
    res = evaluate_episodes(x, bank, "ncc", center=center)
    error = 1.0 - res.mean
    assert error == pytest.approx(0.04, abs=0.001)  # the construction does what it says
    unit = torch.nn.functional.normalize(x - center, dim=1)
    bound = cantelli_error_bound(unit, y, 5, 5)
    assert error <= bound < 0.1


@pytest.mark.parametrize("seed", range(8))
def test_bound_holds_against_the_real_sampler_on_random_finite_classes(seed):
    """Random small finite classes (8-20 images, unequal, heavy-tailed) with many episodes of
    the real sampler; the bound is kept informative (< 0.9) so that it can fail."""
    rng = np.random.default_rng(seed)
    classes = 7
    counts = rng.integers(8, 21, classes)
    y = np.repeat(np.arange(classes), counts)
    means = 4.0 * rng.normal(size=(classes, 5))
    x = means[y] + rng.standard_t(4, size=(len(y), 5)) * rng.uniform(0.5, 1.5, classes)[y, None]
    k = int(rng.integers(1, 6))
    bank = sample_episodes(y, n_way=5, k_shot=k, q_query=int(counts.min()) - k, episodes=6000,
                           seed=seed)
    res = evaluate_episodes(torch.as_tensor(x), bank, "ncc_raw")
    err, se = 1.0 - res.mean, float(res.accuracies.std()) / np.sqrt(bank.episodes)
    bound = cantelli_error_bound(torch.as_tensor(x), torch.as_tensor(y), 5, k)
    assert bound < 0.9
    assert err <= bound + 3 * se, (err, bound)


def test_a_class_too_small_for_an_episode_is_one_clear_error():
    x, y = constructed_example(per=3)
    with pytest.raises(InputError, match="k_shot \\+ 1 = 4 images per class"):
        cantelli_error_bound(x, y, 5, 3)
