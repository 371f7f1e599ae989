"""Collapse controls: one optimiser step moves the parameters as each formula says (gradients by
hand), the ETF is a simplex ETF, defaults train exactly as before, and the terms are logged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analysis import contract as names
from tests.trainables.test_pretrain import Recorder, tiny_config
from trainables.collapse_controls import (
    center_loss,
    etf_weight,
    koleo_entropy_loss,
    update_centers,
)
from trainables.pretrain import Trainer


def test_center_loss_step_moves_features_by_the_hand_gradient():
    """L = lam/(2B) sum ||h_i - c_yi||^2: dL/dh_i = lam (h_i - c_yi) / B; SGD lr eta."""
    rng = np.random.default_rng(0)
    h0 = rng.normal(size=(6, 4))
    c = rng.normal(size=(3, 4))
    y = np.array([0, 1, 2, 0, 1, 1])
    lam, eta = 0.7, 0.3
    h = torch.nn.Parameter(torch.tensor(h0, dtype=torch.float32))
    opt = torch.optim.SGD([h], lr=eta)
    (lam * center_loss(h, torch.tensor(y), torch.tensor(c, dtype=torch.float32))).backward()
    opt.step()
    expected = h0 - eta * lam * (h0 - c[y]) / len(y)
    np.testing.assert_allclose(h.detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_center_update_is_wen_et_al_eq_4():
    """c_j <- c_j - alpha sum_{y_i=j}(c_j - h_i)/(1 + n_j), written out class by class."""
    rng = np.random.default_rng(1)
    h = rng.normal(size=(5, 3))
    c0 = rng.normal(size=(4, 3))
    y = np.array([0, 0, 2, 2, 2])
    centers = torch.tensor(c0, dtype=torch.float32)
    update_centers(centers, torch.tensor(h, dtype=torch.float32), torch.tensor(y), alpha=0.5)
    expected = c0.copy()
    for j in range(4):
        members = h[y == j]
        expected[j] -= 0.5 * (len(members) * c0[j] - members.sum(0)) / (1 + len(members))
    np.testing.assert_allclose(centers.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(centers.numpy()[[1, 3]], c0[[1, 3]])  # absent classes stay


def test_koleo_step_moves_features_by_the_hand_gradient():
    """L = -lam/B sum_i log d_i, d_i = ||z_i - z_n(i)||, z = h/||h||.

    dL/dz_i gets -lam/B (z_i - z_n)/d_i^2 from its own term and +lam/B (z_k - z_i)/d_k^2 from
    each k whose nearest neighbour is i; dL/dh = (I - z z^T) dL/dz / ||h||.
    """
    rng = np.random.default_rng(2)
    h0 = rng.normal(size=(5, 3))
    lam, eta = 0.2, 0.1
    h = torch.nn.Parameter(torch.tensor(h0, dtype=torch.float64))
    opt = torch.optim.SGD([h], lr=eta)
    (lam * koleo_entropy_loss(h, eps=0.0)).backward()
    opt.step()
    norm = np.linalg.norm(h0, axis=1, keepdims=True)
    z = h0 / norm
    dist = np.linalg.norm(z[:, None] - z[None], axis=2) + np.diag([np.inf] * 5)
    nn_ = dist.argmin(1)
    gz = np.zeros_like(z)
    b = len(z)
    for i in range(b):
        n = nn_[i]
        d2 = np.sum((z[i] - z[n]) ** 2)
        gz[i] += -lam / b * (z[i] - z[n]) / d2
        gz[n] += lam / b * (z[i] - z[n]) / d2
    gh = np.stack([(np.eye(3) - np.outer(z[i], z[i])) @ gz[i] / norm[i, 0] for i in range(b)])
    np.testing.assert_allclose(h.detach().numpy(), h0 - eta * gh, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("c", "d"), [(5, 4), (5, 16), (10, 64)])
def test_etf_weight_is_a_simplex_etf(c, d):
    """W W^T = C/(C-1) (I - 11^T/C): unit rows, pairwise cosine -1/(C-1), rows sum to 0."""
    w = etf_weight(c, d, seed=3).double()
    gram = w @ w.T
    expected = c / (c - 1) * (torch.eye(c, dtype=torch.float64) - 1.0 / c)
    torch.testing.assert_close(gram, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(w.sum(0), torch.zeros(d, dtype=torch.float64), atol=1e-6, rtol=0)


def test_etf_needs_width_of_c_minus_1():
    with pytest.raises(ValueError, match=r"training\.etf_head"):
        etf_weight(10, 8)


def test_etf_head_is_not_trained_and_the_step_follows_cross_entropy():
    """With the ETF head the classifier never moves; the rest of the network does."""
    trainer = Trainer(tiny_config(etf_head=True, epochs=1), threads=1,
                      device=torch.device("cpu"))
    head = trainer.model.classifier
    w0 = head.weight.detach().clone()
    torch.testing.assert_close(w0, etf_weight(head.out_features, head.in_features, seed=0))
    stem0 = next(trainer.model.parameters()).detach().clone()
    trainer.fit(Recorder())
    torch.testing.assert_close(head.weight, w0)
    assert not torch.equal(next(trainer.model.parameters()), stem0)
    assert float(head.bias.abs().max()) == 0.0


def test_default_trial_trains_exactly_as_the_code_path_without_controls():
    """Zero weights and no ETF run the old forward: same seed, same loss, bit for bit, as an
    explicit 0.0 configuration (default) and a loss different from a trial with a control on."""
    def first_loss(**kw):
        rec = Recorder()
        Trainer(tiny_config(epochs=1, **kw), threads=1, device=torch.device("cpu")).fit(rec)
        return rec.reports[0]

    base = first_loss()
    explicit = first_loss(center_loss=0.0, feature_entropy=0.0, etf_head=False)
    assert base[names.TRAIN_LOSS] == explicit[names.TRAIN_LOSS]
    assert names.CENTER_LOSS not in base and names.ENTROPY_LOSS not in base
    on = first_loss(center_loss=0.5, feature_entropy=0.1)
    assert math.isfinite(on[names.CENTER_LOSS]) and math.isfinite(on[names.ENTROPY_LOSS])
    assert on[names.TRAIN_LOSS] != base[names.TRAIN_LOSS]


def test_features_then_classifier_is_the_plain_forward():
    """The controlled step's forward (features, then the classifier) equals model(x)."""
    trainer = Trainer(tiny_config(), threads=1, device=torch.device("cpu"))
    trainer.model.eval()
    x = torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(trainer.model.classifier(trainer.model.features(x)),
                               trainer.model(x))


def test_control_losses_are_in_the_contract_only_when_on():
    assert names.CENTER_LOSS not in tiny_config().metric_names()
    cfg = tiny_config(center_loss=0.1, feature_entropy=0.2)
    assert {names.CENTER_LOSS, names.ENTROPY_LOSS} <= cfg.metric_names()


def test_centre_loss_with_mixup_is_a_config_error():
    with pytest.raises(ValueError, match=r"training\.center_loss"):
        tiny_config(center_loss=0.1, mixup_alpha=0.2)


def test_the_controlled_step_with_zero_weights_equals_todays_step():
    """Today's step (model(x), CE) and the controls' step (features -> classifier, CE + 0)
    give the same loss and the same weights after a step, from the same seed."""
    from trainables.augment import normalize

    cfg = tiny_config(aug_strength=0.0)
    old = Trainer(cfg, threads=1, device=torch.device("cpu"))
    new = Trainer(cfg, threads=1, device=torch.device("cpu"))
    split = old.data.source_train
    images, labels = split.images[:16], split.labels[:16]
    torch.manual_seed(0)
    loss_old, _ = old.train_step(images, labels, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    loss_new, _ = new.controlled_step(normalize(images), labels, labels)
    torch.testing.assert_close(loss_new, loss_old)
    for a, b in zip(old.model.parameters(), new.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
