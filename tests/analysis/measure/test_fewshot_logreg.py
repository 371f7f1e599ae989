"""The batched logistic probe against sklearn's LogisticRegression(C=1, solver="lbfgs")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize

from analysis.measure.fewshot import evaluate_episodes, predict_episodes, sample_episodes
from analysis.measure.fewshot_logreg import fit_multinomial, reduce_to_span, sklearn_penalty


def _clusters(num_classes: int, per_class: int, dim: int, noise: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, dim, generator=g, dtype=torch.float64)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    x = means[labels] + noise * torch.randn(labels.numel(), dim, generator=g, dtype=torch.float64)
    return x, labels


def _sklearn_predictions(x: np.ndarray, support: np.ndarray, query: np.ndarray, **kw) -> np.ndarray:
    """The RFS protocol, one episode at a time."""
    preds = []
    for sup, qry in zip(support, query, strict=True):
        n_way, k_shot = sup.shape
        y = np.repeat(np.arange(n_way), k_shot)
        model = LogisticRegression(C=1.0, solver="lbfgs", **kw)
        model.fit(normalize(x[sup.reshape(-1)]), y)
        preds.append(model.predict(normalize(x[qry.reshape(-1)])).reshape(qry.shape))
    return np.stack(preds)


def _our_predictions(x: torch.Tensor, bank, method: str | None = None) -> np.ndarray:
    return predict_episodes(x, bank, "logreg", method=method).numpy()


@pytest.mark.parametrize(
    ("n_way", "k_shot", "noise"), [(5, 1, 3.0), (5, 5, 3.0), (3, 2, 4.0), (2, 5, 4.0)]
)
def test_predictions_agree_with_sklearn(n_way: int, k_shot: int, noise: float) -> None:
    # Tolerance: the optimum is unique, so predictions differ only where sklearn's lbfgs
    # (tol=1e-4, the RFS setting max_iter=1000) stops short of it next to a decision boundary:
    # measured 99.9-99.97% agreement; we require 99% overall and 90% in every episode.
    x, labels = _clusters(16, 20, 64, noise, seed=n_way * 10 + k_shot)
    bank = sample_episodes(labels, n_way=n_way, k_shot=k_shot, q_query=15, episodes=40, seed=3)
    ours = _our_predictions(x, bank)
    ref = _sklearn_predictions(x.numpy(), bank.support.numpy(), bank.query.numpy(), max_iter=1000)
    per_episode = (ours == ref).reshape(bank.episodes, -1).mean(axis=1)
    assert per_episode.mean() >= 0.99 and per_episode.min() >= 0.9
    truth = np.arange(n_way)[None, :, None]
    assert 0.4 < (ref == truth).mean() < 0.98  # hard enough that a wrong probe would show


def test_predictions_match_sklearn_exactly_when_it_converges_fully() -> None:
    # With a tight sklearn tolerance the residue of the test above disappears.
    x, labels = _clusters(16, 20, 32, 3.0, seed=11)
    bank = sample_episodes(labels, n_way=5, k_shot=2, q_query=15, episodes=12, seed=4)
    ref = _sklearn_predictions(
        x.numpy(), bank.support.numpy(), bank.query.numpy(), max_iter=10_000, tol=1e-10
    )
    for method in ("gram", "gather"):
        np.testing.assert_array_equal(_our_predictions(x, bank, method), ref)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_fit_multinomial_reaches_sklearns_optimum(n_classes: int) -> None:
    # Primal features (no span reduction): W and the intercept differences must match sklearn.
    g = torch.Generator().manual_seed(n_classes)
    episodes, per_class, dim = 6, 5, 3
    z = torch.randn(episodes, n_classes * per_class, dim, generator=g, dtype=torch.float64)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    z = z + 0.8 * torch.randn(n_classes, dim, generator=g, dtype=torch.float64)[y]
    theta = fit_multinomial(z, y, n_classes, sklearn_penalty(n_classes, 1.0))
    for e in range(episodes):
        m = LogisticRegression(C=1.0, solver="lbfgs", tol=1e-12, max_iter=10_000)
        m.fit(z[e].numpy(), y.numpy())
        w, b = theta[e, :dim].numpy(), theta[e, dim].numpy()
        if n_classes == 2:  # sklearn's binary model: one vector, w_1 - w_0
            np.testing.assert_allclose(w[:, 1] - w[:, 0], m.coef_[0], atol=1e-6)
            np.testing.assert_allclose(b[1] - b[0], m.intercept_[0], atol=1e-6)
        else:
            np.testing.assert_allclose(w.T, m.coef_, atol=1e-6)
            np.testing.assert_allclose(b - b[0], m.intercept_ - m.intercept_[0], atol=1e-6)


def test_span_coordinates_reproduce_the_inner_products() -> None:
    g = torch.Generator().manual_seed(0)
    sup = torch.randn(4, 6, 10, generator=g, dtype=torch.float64)
    sup[:, 5] = sup[:, 4]  # a duplicated support item: rank 5, one direction dropped
    qry = torch.randn(4, 7, 10, generator=g, dtype=torch.float64)
    z_s, z_q = reduce_to_span(sup @ sup.transpose(1, 2), qry @ sup.transpose(1, 2))
    assert torch.isfinite(z_s).all() and torch.isfinite(z_q).all()
    torch.testing.assert_close(z_s @ z_s.transpose(1, 2), sup @ sup.transpose(1, 2))
    torch.testing.assert_close(z_q @ z_s.transpose(1, 2), qry @ sup.transpose(1, 2))


def test_probe_handles_duplicate_support_features() -> None:
    x, labels = _clusters(6, 10, 8, 1.0, seed=0)
    x[labels == 0] = x[labels == 0][0]  # every item of class 0 identical
    bank = sample_episodes(labels, n_way=3, k_shot=3, q_query=3, episodes=30, seed=0)
    res = evaluate_episodes(x, bank, "logreg")
    assert np.isfinite(res.mean) and res.mean > 0.5
