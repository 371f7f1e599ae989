"""Transferability estimators: equal to slow references, and right on data whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from analysis.contract import ESTIMATORS
from analysis.errors import InputError
from analysis.measure.transfer import KNN_K, knn_loo_accuracy, transfer_metrics
from analysis.measure.transfer_gaussian import gbc, ncti_parts, sfda
from analysis.measure.transfer_linear import hscore, logme
from analysis.measure.transfer_source import leep, nce
from tests.analysis.measure import transfer_refs as ref


def blobs(classes: int = 6, per: int = 12, dim: int = 10, spread: float = 1.0,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes: means ~ N(0, 4 I), within-class noise ~ N(0, spread^2 I)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), per)
    means = 2.0 * rng.normal(size=(classes, dim))
    return means[y] + spread * rng.normal(size=(len(y), dim)), y


def t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(a)


@pytest.mark.parametrize("dim", [10, 100])  # N > D and N < D take different spectral paths
def test_logme_equals_reference(dim):
    f, y = blobs(dim=dim, spread=2.0)
    assert logme(t(f), t(y)) == pytest.approx(ref.logme_ref(f, y), rel=1e-6)


def test_hscore_equals_reference():
    f, y = blobs(dim=20, spread=1.5)
    assert hscore(t(f), t(y)) == pytest.approx(ref.hscore_ref(f, y), rel=1e-8)


def test_leep_and_nce_equal_reference():
    f, y = blobs(classes=5, per=8, dim=6, spread=1.5)
    logits = f @ np.random.default_rng(1).normal(size=(6, 7))
    assert leep(t(logits), t(y)) == pytest.approx(ref.leep_ref(logits, y), rel=1e-10)
    assert nce(t(logits), t(y)) == pytest.approx(ref.nce_ref(logits, y), rel=1e-10)


@pytest.mark.parametrize("dim", [12, 80])  # below and above the 64-dimension PCA
def test_gbc_equals_reference(dim):
    f, y = blobs(dim=dim, spread=3.0, per=15)
    assert gbc(t(f), t(y)) == pytest.approx(ref.gbc_ref(f, y), rel=1e-7)


def test_sfda_equals_reference():
    f, y = blobs(dim=8, spread=1.5, per=15)
    assert sfda(t(f), t(y)) == pytest.approx(ref.sfda_ref(f, y), rel=1e-7)


@pytest.mark.parametrize("scale", [0.3, 3.0])  # shrinkage large vs at its floor
def test_ncti_parts_equal_reference(scale):
    f, y = blobs(dim=12, spread=1.5, per=15)
    got, want = ncti_parts(t(scale * f), t(y)), ref.ncti_ref(scale * f, y)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-6), key


def test_knn_equals_reference():
    f, y = blobs(dim=5, spread=2.5, per=10)
    assert knn_loo_accuracy(t(f), t(y)) == pytest.approx(ref.knn_ref(f, y, KNN_K), abs=0)


def predictable(signal: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels linearly predictable from the features in proportion to `signal`."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(5), 30)
    means = np.eye(5, 20)
    return signal * means[y] + rng.normal(size=(150, 20)), y


@pytest.mark.parametrize("fn", [logme, hscore, gbc, sfda, knn_loo_accuracy])
def test_rises_as_labels_become_linearly_predictable(fn):
    values = [fn(*map(t, predictable(s))) for s in (0.0, 1.0, 2.0, 4.0, 8.0)]
    assert values == sorted(values) and values[-1] > values[0], values


def test_ncti_parts_move_with_collapse():
    loose, tight = predictable(1.0), predictable(8.0)
    a, b = ncti_parts(*map(t, loose)), ncti_parts(*map(t, tight))
    assert b["ncti_ncc"] > a["ncti_ncc"]
    assert b["ncti_seli"] > a["ncti_seli"]


def simplex_etf(classes: int, per: int, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Every sample at its class's vertex of a simplex ETF (plus optional noise)."""
    rng = np.random.default_rng(0)
    m = np.sqrt(classes / (classes - 1)) * (np.eye(classes) - 1.0 / classes)
    y = np.repeat(np.arange(classes), per)
    return m[y] + noise * rng.normal(size=(len(y), classes)), y


def test_known_answers_on_an_exact_simplex_etf():
    f, y = simplex_etf(5, 6)
    assert knn_loo_accuracy(t(f), t(y)) == 1.0
    assert gbc(t(f), t(y)) == pytest.approx(0.0, abs=1e-12)  # no overlap between classes
    # Collapsed onto a 4-d simplex in 5 dims: cov(f) = lam P on the span and cov(E[f|y]) =
    # N/(N-1) lam P, so H = 4 N/(N-1) (1-a)/((1-a) + a 4/5) for Ledoit-Wolf shrinkage a
    # (here taken from scikit-learn): (C - 1) N/(N-1) without shrinkage, less with it.
    a = LedoitWolf().fit(f).shrinkage_
    n = len(y)
    assert hscore(t(f), t(y)) == pytest.approx(4 * n / (n - 1) * (1 - a) / (1 - a + 0.8 * a),
                                               rel=1e-9)


def test_source_head_known_answers():
    y = np.repeat(np.arange(4), 5)
    perfect = 50.0 * np.eye(4)[y]  # the head's class = the target class
    assert nce(t(perfect), t(y)) == pytest.approx(0.0, abs=1e-12)
    assert leep(t(perfect), t(y)) == pytest.approx(0.0, abs=1e-9)
    blind = np.zeros((20, 3))  # the head says the same thing for every image
    assert nce(t(blind), t(y)) == pytest.approx(-math.log(4))
    assert leep(t(blind), t(y)) == pytest.approx(-math.log(4))


def test_knn_is_one_on_separated_clusters_and_chance_on_noise():
    f, y = blobs(classes=4, per=20, dim=8, spread=0.01)
    assert knn_loo_accuracy(t(f), t(y)) == 1.0
    rng = np.random.default_rng(3)
    noise = rng.normal(size=(400, 16))
    labels = np.repeat(np.arange(4), 100)
    assert abs(knn_loo_accuracy(t(noise), t(labels)) - 0.25) < 0.08


def test_transfer_metrics_returns_every_estimator_finite():
    f, y = blobs(classes=6, per=10, dim=16, spread=1.5)
    logits = f @ np.random.default_rng(2).normal(size=(16, 9))
    out = transfer_metrics(t(f).float(), t(y), t(logits).float())
    assert list(out) == list(ESTIMATORS)
    assert all(math.isfinite(v) for v in out.values())
    assert transfer_metrics(t(f), t(y), None, ["knn"]) == {"knn": out["knn"]}


def test_bad_input_is_one_clear_error():
    f, y = blobs()
    with pytest.raises(InputError, match=r"unknown.*'logmee'.*known"):
        transfer_metrics(t(f), t(y), None, ["logmee"])
    with pytest.raises(InputError, match="logits"):
        transfer_metrics(t(f), t(y), None, ["leep"])
    with pytest.raises(InputError, match="two classes"):
        transfer_metrics(t(f[:3]), t(np.array([0, 0, 1])), None, ["knn"])


def test_row_blocks_change_nothing(monkeypatch):
    """k-NN forms its similarity rows in blocks, GBC its class pairs in blocks of 64: results
    across block boundaries equal the references."""
    import analysis.measure.transfer as transfer_mod

    monkeypatch.setattr(transfer_mod, "_ROWS", 7)
    f, y = blobs(dim=5, spread=2.5, per=10)
    assert knn_loo_accuracy(t(f), t(y)) == ref.knn_ref(f, y, KNN_K)
    f, y = blobs(classes=70, per=3, dim=6, spread=2.0)
    assert gbc(t(f), t(y)) == pytest.approx(ref.gbc_ref(f, y), rel=1e-7)


@pytest.mark.gpu
@pytest.mark.parametrize("dim", [16, 300])  # N > D and N < D take different spectral paths
def test_cuda_features_give_the_cpu_values(dim):
    """Every estimator and the Cantelli bound run where the features are (float64 on the GPU
    of a GPU trial) and give the CPU's values."""
    from trainables.evaluate_transfer import transfer_and_bound

    f, y = blobs(classes=20, per=12, dim=dim, spread=1.5)
    logits = f @ np.random.default_rng(2).normal(size=(dim, 9))
    x, lab, lg = t(f).float(), t(y), t(logits).float()
    center = x.mean(0)
    cpu = transfer_and_bound(x, lab, lg, ESTIMATORS, ["5w1s", "5w5s"], center)
    gpu = transfer_and_bound(x.cuda(), lab.cuda(), lg.cuda(), ESTIMATORS, ["5w1s", "5w5s"],
                             center.cuda())
    assert list(gpu) == list(cpu)
    for key, value in cpu.items():
        assert gpu[key] == pytest.approx(value, rel=1e-7, abs=1e-9), key
