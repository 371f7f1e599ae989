"""NCTI on small targets and GBC's two Gaussian models, against references written from the
authors' released code (tests/analysis/measure/transfer_refs.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.errors import InputError
from analysis.measure.transfer_gaussian import gbc, lda_svd, ncti_parts
from tests.analysis.measure import transfer_refs as ref
from tests.analysis.measure.test_transfer import blobs


def small_target(seed: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """N = 70 images of C = 10 classes in D = 256: N - C = 60 < 64 PCA dimensions, so the
    within-class scatter is singular and NCTI's shrinkage sits at its 1e-10 floor."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(10), 7)
    means = rng.normal(size=(10, 256)) * rng.uniform(0.3, 3.0)
    return means[y] + spread * rng.normal(size=(70, 256)), y


@pytest.mark.parametrize(("seed", "spread"), [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0)])
def test_ncti_on_small_targets_equals_the_authors_svd_solver(seed, spread):
    """The eigen solver at the floor gave S_seli of 5e6-3e7 on these sets; the authors' code
    (scikit-learn's svd solver there) gives hundreds to thousands."""
    f, y = small_target(seed, spread)
    got, want = ncti_parts(torch.as_tensor(f), torch.as_tensor(y)), ref.ncti_ref(f, y)
    assert np.isfinite(list(got.values())).all()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), key
    assert got["ncti_seli"] < 1e4


def test_svd_lda_equals_scikit_learn_on_scores_and_projection():
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    f, y = small_target(5, 1.5)
    z = f[:, :64]
    sk = LinearDiscriminantAnalysis(solver="svd").fit(z, y)
    ours = lda_svd(torch.as_tensor(z), torch.as_tensor(y))
    np.testing.assert_allclose(ours.proba(torch.as_tensor(z)).numpy(), sk.predict_proba(z),
                               atol=1e-9)
    low, want = ours.transform(torch.as_tensor(z), 9).numpy(), sk.transform(z)
    # discriminant directions are defined up to sign
    np.testing.assert_allclose(np.abs(low), np.abs(want), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("gaussian", ["spherical", "diagonal"])
@pytest.mark.parametrize(("dim", "spread"), [(12, 3.0), (80, 3.0), (30, 0.003)])
def test_gbc_equals_the_authors_code(gaussian, dim, spread):
    """Spread 0.003 puts class variances under the absolute 1e-4 floor."""
    f, y = blobs(dim=dim, spread=spread, per=15)
    got = gbc(torch.as_tensor(f), torch.as_tensor(y), gaussian=gaussian)
    assert got == pytest.approx(ref.gbc_ref(f, y, gaussian=gaussian), rel=1e-7, abs=1e-300)


def test_gbc_default_is_spherical_and_the_models_differ():
    f, y = blobs(dim=20, spread=2.5, per=15)
    ft, yt = torch.as_tensor(f), torch.as_tensor(y)
    assert gbc(ft, yt) == gbc(ft, yt, gaussian="spherical")
    assert gbc(ft, yt) != pytest.approx(gbc(ft, yt, gaussian="diagonal"), rel=1e-3)


def test_gbc_known_answers():
    """Identical classes overlap completely (each ordered pair adds 1); a spherical class pair
    in one dimension with equal variance s gives exp(-d^2 / (8 s)) per ordered pair."""
    rng = np.random.default_rng(0)
    same = rng.normal(size=(20, 5))
    f, y = np.vstack([same, same, same]), np.repeat([0, 1, 2], 20)
    assert gbc(torch.as_tensor(f), torch.as_tensor(y)) == pytest.approx(-6.0, rel=1e-12)
    pts = np.array([-1.0, 1.0])  # variance 1 around each centre
    f = np.concatenate([pts, pts + 3.0])[:, None]
    y = np.repeat([0, 1], 2)
    assert gbc(torch.as_tensor(f), torch.as_tensor(y)) == pytest.approx(
        -2 * np.exp(-9 / 8), rel=1e-12)


def test_gbc_unknown_gaussian_is_one_clear_error():
    f, y = blobs()
    with pytest.raises(InputError, match="gaussian must be 'spherical' or 'diagonal'"):
        gbc(torch.as_tensor(f), torch.as_tensor(y), gaussian="full")
