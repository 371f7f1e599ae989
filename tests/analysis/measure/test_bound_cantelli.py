"""The Cantelli bound on NCC error: its moments against loops, and that it bounds simulated errors.

Episodes are simulated as the episode bank draws them (supports and query distinct, without
replacement, from each class's pool; the bound's model), on Gaussian and on heavy-tailed
(Student t, 5 degrees of freedom, skewed by a square) pools. The bound must hold there; the
tests pick separations where it is far from vacuous, so a wrong derivation fails them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.errors import InputError
from analysis.measure.bound import (
    cantelli_error_bound,
    cantelli_pair_terms,
    ncc_error_bound,
    pair_moments,
    projection_moments,
)


def pool(kind: str, classes: int = 8, per: int = 30, dim: int = 6, sep: float = 3.0,
         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Classes with random means (scale `sep`) and unit-scale within-class noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), per)
    means = sep * rng.normal(size=(classes, dim))
    if kind == "gaussian":
        noise = rng.normal(size=(len(y), dim))
    else:  # heavy tails and skew: t(5) plus a centred squared t(5) in the first coordinate
        noise = rng.standard_t(5, size=(len(y), dim))
        noise[:, 0] += 0.5 * (rng.standard_t(5, size=len(y)) ** 2 - 5 / 3)
    scale = 1.0 + rng.uniform(size=classes)[y, None]  # unequal class spreads
    return means[y] + scale * noise, y


def moments_ref(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Every pool moment by loops over classes and pairs."""
    cs = np.unique(y)
    mu = {c: x[y == c].mean(0) for c in cs}
    e = {c: x[y == c] - mu[c] for c in cs}
    cov = {c: e[c].T @ e[c] / len(e[c]) for c in cs}
    n = len(cs)
    out = {k: np.zeros((n, n)) for k in ("cross", "dist2", "dir_var", "third")}
    out["trace"] = np.array([np.trace(cov[c]) for c in cs])
    out["fourth"] = np.array([np.mean(np.sum(e[c] ** 2, 1) ** 2) for c in cs])
    for i in cs:
        for j in cs:
            delta = mu[i] - mu[j]
            out["cross"][i, j] = np.trace(cov[i] @ cov[j])
            out["dist2"][i, j] = delta @ delta
            out["dir_var"][i, j] = delta @ cov[i] @ delta
            out["third"][i, j] = np.mean((e[j] @ delta) * np.sum(e[j] ** 2, 1))
    return out


@pytest.mark.parametrize("kind", ["gaussian", "heavy"])
def test_pair_moments_equal_loops(kind):
    x, y = pool(kind)
    got = pair_moments(torch.as_tensor(x), torch.as_tensor(y))
    for key, want in moments_ref(x, y).items():
        np.testing.assert_allclose(getattr(got, key).numpy(), want, rtol=1e-9, atol=1e-9,
                                   err_msg=key)


def distinct(rng: np.random.Generator, n: int, draws: int, size: int) -> np.ndarray:
    """(draws, size) indices, each row `size` distinct of range(n) in random order."""
    return rng.random((draws, n)).argsort(1)[:, :size]


def simulate_w(x: np.ndarray, y: np.ndarray, i: int, j: int, k: int, draws: int,
               rng: np.random.Generator) -> np.ndarray:
    """W = (q - (m_i + m_j)/2) . (m_i - m_j), supports and query drawn without replacement."""
    xi, xj = x[y == i], x[y == j]
    own = distinct(rng, len(xi), draws, k + 1)
    mi = xi[own[:, :k]].mean(1)
    mj = xj[distinct(rng, len(xj), draws, k)].mean(1)
    q = xi[own[:, k]]
    return np.einsum("nd,nd->n", q - (mi + mj) / 2, mi - mj)


@pytest.mark.parametrize("kind", ["gaussian", "heavy"])
@pytest.mark.parametrize("k", [1, 5])
def test_mean_and_variance_of_the_projection_match_simulation(kind, k):
    """The derivation's E W and Var W, against 200k simulated episodes (fails on a lost term)."""
    x, y = pool(kind, classes=3, sep=1.0)
    m = pair_moments(torch.as_tensor(x), torch.as_tensor(y))
    w = simulate_w(x, y, 0, 1, k, 400_000, np.random.default_rng(1))
    mean, var = (float(v[0, 1]) for v in projection_moments(m, k))
    se_mean = w.std() / np.sqrt(len(w))
    assert abs(w.mean() - mean) < 5 * se_mean
    assert w.var() == pytest.approx(var, rel=0.03)
    c = float(cantelli_pair_terms(m, k)[0, 1])
    assert c == (pytest.approx(var / (var + mean ** 2)) if mean > 0 else 1.0)


@pytest.mark.parametrize("kind", ["gaussian", "heavy"])
@pytest.mark.parametrize(("n_way", "k_shot"), [(5, 1), (5, 5), (3, 2)])
def test_bound_holds_on_the_episode_banks_episodes(kind, n_way, k_shot):
    """Against the real sampler and NCC on the same features (ncc_raw: the raw features)."""
    from analysis.measure.fewshot import evaluate_episodes, sample_episodes

    x, y = pool(kind, sep=5.0)
    bound = cantelli_error_bound(torch.as_tensor(x), torch.as_tensor(y), n_way, k_shot)
    bank = sample_episodes(y, n_way=n_way, k_shot=k_shot, q_query=10, episodes=4000, seed=2)
    res = evaluate_episodes(torch.as_tensor(x), bank, "ncc_raw")
    err, se = 1.0 - res.mean, float(res.accuracies.std()) / np.sqrt(bank.episodes)
    assert bound < 0.9, "the setting must leave the bound room to fail"
    assert err <= bound + 3 * se, (err, bound)


def test_tighter_than_the_cdnv_bound_and_monotone():
    x, y = pool("gaussian", sep=2.0)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    from analysis.measure.collapse import collapse_metrics
    cdnv = float(collapse_metrics(xt, yt)["cdnv"])
    assert cantelli_error_bound(xt, yt, 5, 5) < min(1.0, ncc_error_bound(cdnv, 5, 5))
    assert cantelli_error_bound(xt, yt, 5, 5) < cantelli_error_bound(xt, yt, 5, 1)
    assert cantelli_error_bound(xt, yt, 3, 5) < cantelli_error_bound(xt, yt, 5, 5)
    collapsed = torch.as_tensor(np.eye(8)[y] + 1e-6 * np.random.default_rng(0).normal(
        size=(len(y), 8)))
    assert cantelli_error_bound(collapsed, yt, 5, 1) < 1e-6


def test_bad_arguments_are_one_clear_error():
    x, y = pool("gaussian")
    for n_way, k_shot, match in [(1, 1, "n_way"), (9, 1, "n_way"), (5, 0, "k_shot")]:
        with pytest.raises(InputError, match=match):
            cantelli_error_bound(torch.as_tensor(x), torch.as_tensor(y), n_way, k_shot)


def test_pair_moments_in_row_blocks_equal_loops(monkeypatch):
    import analysis.measure.bound as bound_mod

    monkeypatch.setattr(bound_mod, "_ROWS", 13)
    x, y = pool("heavy", classes=5, per=11)
    got = pair_moments(torch.as_tensor(x), torch.as_tensor(y))
    np.testing.assert_allclose(got.cross.numpy(), moments_ref(x, y)["cross"], rtol=1e-9)


def test_cauchy_schwarz_cross_term_is_exact_on_the_diagonal_and_an_upper_bound_off_it():
    """Above EXACT_CROSS_MAX images tr(Sigma_i Sigma_j) is replaced by sqrt(tr Sigma_i^2
    tr Sigma_j^2): the bound may only grow, and still holds."""
    from analysis.measure.bound import cantelli_bound_from_moments

    x, y = pool("heavy", per=17)  # unequal counts after dropping some rows below
    keep = np.arange(len(y)) % 7 != 3
    x, y = x[keep], y[keep]
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    exact = pair_moments(xt, yt, exact_cross=True)
    cs = pair_moments(xt, yt, exact_cross=False)
    np.testing.assert_allclose(cs.cross.diagonal().numpy(), exact.cross.diagonal().numpy(),
                               rtol=1e-10)
    assert (cs.cross >= exact.cross - 1e-12).all()
    for n_way, k_shot in ((5, 1), (5, 5)):
        assert cantelli_bound_from_moments(cs, n_way, k_shot) >= cantelli_bound_from_moments(
            exact, n_way, k_shot)
