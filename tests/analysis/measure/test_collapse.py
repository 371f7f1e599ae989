"""CDNV and the streaming class statistics against slow references, known geometry, invariances."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.measure.collapse import (
    ClassStatsAccumulator,
    cdnv,
    cdnv_directional,
    collapse_metrics,
    pairwise_sq_distances,
)
from analysis.measure.collapse_stats import class_stats

try:
    from tests.analysis.measure.collapse_refs import cdnv_pairs, class_moments, nc_refs
except ImportError:  # tests/ without __init__.py files: pytest puts this folder on sys.path
    from collapse_refs import cdnv_pairs, class_moments, nc_refs  # type: ignore[no-redef]

RTOL = 1e-9


def random_split(seed: int, n: int = 400, d: int = 12, c: int = 9, dtype=torch.float64):
    """Gaussian classes around random means, unequal class sizes, float64 by default."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, d, generator=g, dtype=torch.float64) * 2.0
    y = torch.randint(0, c, (n,), generator=g)
    scale = 0.3 + torch.rand(c, 1, generator=g, dtype=torch.float64)
    x = means[y] + torch.randn(n, d, generator=g, dtype=torch.float64) * scale[y]
    return x.to(dtype), y


def ref_summary(pairs: dict, num_classes: int):
    vals = np.array(list(pairs.values()))
    worst = np.full(num_classes, np.nan)
    for (i, j), v in pairs.items():
        for a in (i, j):
            worst[a] = np.nanmax([worst[a], v])
    return vals.mean(), np.median(vals), worst


def test_stats_match_two_pass_reference():
    x, y = random_split(0)
    stats = class_stats(x, y, 9, track_scatter=True)
    ref = class_moments(x.numpy(), y.numpy(), 9)
    assert stats.counts.tolist() == [m[0] for m in ref]
    np.testing.assert_allclose(stats.means.numpy(), np.stack([m[1] for m in ref]), rtol=RTOL)
    np.testing.assert_allclose(stats.sq_dev.numpy(), [m[2] for m in ref], rtol=RTOL)
    assert stats.scatter is not None
    np.testing.assert_allclose(stats.scatter.numpy(), sum(m[3] for m in ref), rtol=RTOL,
                               atol=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("seed", [1, 2])
def test_cdnv_matches_reference(seed, unbiased):
    x, y = random_split(seed)
    res = cdnv(class_stats(x, y, 9), unbiased=unbiased, return_matrix=True)
    pairs = cdnv_pairs(x.numpy(), y.numpy(), 9, unbiased=unbiased)
    mean, median, worst = ref_summary(pairs, 9)
    assert res.mean == pytest.approx(mean, rel=RTOL)
    assert res.median == pytest.approx(median, rel=RTOL)
    np.testing.assert_allclose(res.worst.numpy(), worst, rtol=RTOL)
    assert res.matrix is not None
    for (i, j), v in pairs.items():
        assert res.matrix[i, j].item() == pytest.approx(v, rel=RTOL)
        assert res.matrix[j, i].item() == pytest.approx(v, rel=RTOL)
    partner = res.worst_partner
    for i in range(9):
        assert res.matrix[i, partner[i]].item() == pytest.approx(worst[i], rel=RTOL)
    assert res.num_pairs == 36 and res.excluded_pairs == 0 and res.excluded_classes == 0


def test_asymmetric_cdnv_matches_reference_and_keeps_the_mean():
    x, y = random_split(3)
    stats = class_stats(x, y, 9)
    res = cdnv(stats, asymmetric=True, return_matrix=True)
    pairs = cdnv_pairs(x.numpy(), y.numpy(), 9, asymmetric=True)
    assert res.matrix is not None
    for (i, j), v in pairs.items():
        assert res.matrix[i, j].item() == pytest.approx(v, rel=RTOL)
    assert res.median == pytest.approx(np.median(list(pairs.values())), rel=RTOL)
    assert res.mean == pytest.approx(cdnv(stats).mean, rel=1e-12)
    assert not np.allclose(res.matrix.nan_to_num().numpy(), res.matrix.nan_to_num().T.numpy())


@pytest.mark.parametrize("unbiased", [False, True])
def test_directional_cdnv_matches_reference(unbiased):
    x, y = random_split(4)
    res = cdnv_directional(x, y, class_stats(x, y, 9), unbiased=unbiased, return_matrix=True)
    pairs = cdnv_pairs(x.numpy(), y.numpy(), 9, unbiased=unbiased, directional=True)
    assert res.mean == pytest.approx(np.mean(list(pairs.values())), rel=RTOL)
    assert res.median == pytest.approx(np.median(list(pairs.values())), rel=RTOL)
    asym = cdnv_directional(x, y, class_stats(x, y, 9), asymmetric=True, return_matrix=True,
                            chunk_rows=37)
    ref = cdnv_pairs(x.numpy(), y.numpy(), 9, asymmetric=True, directional=True)
    assert asym.matrix is not None
    for (i, j), v in ref.items():
        assert asym.matrix[i, j].item() == pytest.approx(v, rel=RTOL)


def etf_split(k: int = 4, d: int = 8, a: float = 4.0, s: float = 0.5):
    """Means a*e_c (a simplex ETF once centred), samples mu_c +- s*e_m for every axis m: each
    class mean is exact, every deviation has norm s, per-coordinate variance s^2/d."""
    xs, ys = [], []
    eye = torch.eye(d)
    for c in range(k):
        for m in range(d):
            for sign in (1.0, -1.0):
                xs.append(a * eye[c] + sign * s * eye[m])
                ys.append(c)
    return torch.stack(xs), torch.tensor(ys)


def test_known_geometry_gives_closed_form_values():
    k, d, a, s = 4, 8, 4.0, 0.5  # K a power of two: centring the means is exact too
    x, y = etf_split(k, d, a, s)
    assert x.dtype == torch.float32
    out = collapse_metrics(x, y)
    # Var_c = s^2 for every class, ||mu_i - mu_j||^2 = 2 a^2: CDNV = s^2 / (2 a^2) = 1/128.
    assert out["cdnv"] == s**2 / (2 * a**2) == 1 / 128
    assert out["cdnv_median"] == 1 / 128
    n = 2 * d
    assert out["cdnv_unbiased"] == pytest.approx(1 / 128 * n / (n - 1), rel=1e-15)
    # Sigma_c = s^2/d I: along any direction the variance is s^2/d, so cdnv_dir = CDNV / d.
    assert out["cdnv_dir"] == pytest.approx(1 / 128 / d, rel=1e-15)
    # S_W = s^2/d I, S_B = a^2/K (projector of rank K-1): NC1 = s^2 (K-1) / (d a^2).
    assert out["nc1"] == pytest.approx(s**2 * (k - 1) / (d * a**2), rel=1e-13)
    assert out["nc2_equinorm"] == pytest.approx(0.0, abs=1e-15)
    assert out["nc2_equiangle"] == pytest.approx(0.0, abs=1e-15)
    assert out["excluded_classes"] == 0 and out["excluded_pairs"] == 0


def invariance_cases():
    x, y = random_split(5)
    g = torch.Generator().manual_seed(6)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    perm = torch.randperm(9, generator=g)
    order = torch.randperm(len(y), generator=g)
    yield "rotation", x @ q, y
    yield "translation", x + 7.5 * torch.randn(12, generator=g, dtype=torch.float64), y
    yield "scaling", x * 3.7, y
    yield "relabelling", x, perm[y]
    yield "row order", x[order], y[order]


@pytest.mark.parametrize("case", list(invariance_cases()), ids=lambda c: c[0])
def test_cdnv_invariances(case):
    x, y = random_split(5)
    base = cdnv(class_stats(x, y, 9))
    _, x2, y2 = case
    other = cdnv(class_stats(x2, y2, 9))
    assert other.mean == pytest.approx(base.mean, rel=RTOL)
    assert other.median == pytest.approx(base.median, rel=RTOL)
    for unbiased in (False, True):
        assert cdnv(class_stats(x2, y2, 9), unbiased=unbiased).mean == pytest.approx(
            cdnv(class_stats(x, y, 9), unbiased=unbiased).mean, rel=RTOL)
    stats2 = class_stats(x2, y2, 9)
    assert cdnv_directional(x2, y2, stats2).mean == pytest.approx(
        cdnv_directional(x, y, class_stats(x, y, 9)).mean, rel=RTOL)


@pytest.mark.parametrize("batch", [1, 7, 64, 399, 400])
def test_streaming_equals_one_shot_for_any_batch_size(batch):
    x, y = random_split(7)
    one = class_stats(x, y, 9, track_scatter=True)
    acc = ClassStatsAccumulator(9, track_scatter=True, chunk_rows=batch)
    for start in range(0, len(y), batch):
        acc.update(x[start:start + batch], y[start:start + batch])
    got = acc.result()
    assert torch.equal(got.counts, one.counts)
    torch.testing.assert_close(got.means, one.means, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got.sq_dev, one.sq_dev, rtol=1e-12, atol=0)
    assert got.scatter is not None and one.scatter is not None
    torch.testing.assert_close(got.scatter, one.scatter, rtol=1e-12, atol=1e-12)
    assert cdnv(got).mean == pytest.approx(cdnv(one).mean, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), cuts=st.lists(st.integers(0, 120), max_size=4))
def test_merging_accumulators_in_any_grouping_equals_one_shot(seed, cuts):
    x, y = random_split(seed % 1000, n=120, d=5, c=4)
    bounds = sorted({0, 120, *cuts})
    parts = []
    for lo, hi in itertools.pairwise(bounds):
        parts.append(ClassStatsAccumulator(4, track_scatter=True).update(x[lo:hi], y[lo:hi]))
    total = ClassStatsAccumulator(4, track_scatter=True)
    for part in reversed(parts):  # merge order differs from data order
        total.merge(part)
    got, one = total.result(), class_stats(x, y, 4, track_scatter=True)
    assert torch.equal(got.counts, one.counts)
    torch.testing.assert_close(got.means, one.means, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(got.sq_dev, one.sq_dev, rtol=1e-12, atol=1e-12)
    assert got.scatter is not None and one.scatter is not None
    torch.testing.assert_close(got.scatter, one.scatter, rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3), shift=st.floats(-50, 50))
def test_cdnv_is_nonnegative_and_affine_invariant(seed, scale, shift):
    x, y = random_split(seed, n=90, d=4, c=5)
    base = cdnv(class_stats(x, y, 5)).mean
    moved = cdnv(class_stats(x * scale + shift, y, 5)).mean
    assert base >= 0.0
    assert moved == pytest.approx(base, rel=1e-8)


def test_collapsed_regime_where_one_pass_float32_fails():
    """Within-class std 1e-3 around means of norm ~100: E||x||^2 - ||mu||^2 in float32 keeps
    no correct digit of the variance, the two-pass float64 statistics keep ~all of them."""
    g = torch.Generator().manual_seed(8)
    k, d, n = 10, 64, 50
    dirs = torch.randn(k, d, generator=g)
    means = 100.0 * dirs / dirs.norm(dim=1, keepdim=True)
    y = torch.arange(k).repeat_interleave(n)
    x = (means[y] + 1e-3 * torch.randn(k * n, d, generator=g)).float()
    exact = np.mean(list(cdnv_pairs(x.numpy(), y.numpy(), k).values()))

    naive_var = torch.stack([(x[y == c] ** 2).sum(1).mean() - (x[y == c].mean(0) ** 2).sum()
                             for c in range(k)])  # float32, one pass
    mu = torch.stack([x[y == c].mean(0) for c in range(k)])
    naive = np.mean([float((naive_var[i] + naive_var[j]) / (2 * ((mu[i] - mu[j]) ** 2).sum()))
                     for i in range(k) for j in range(i + 1, k)])

    exact_var = np.array([m[2] / m[0] for m in class_moments(x.numpy(), y.numpy(), k)])
    naive_err = np.abs(naive_var.double().numpy() - exact_var) / exact_var
    assert np.median(naive_err) >= 1.0 and (naive_var <= 0).any(), naive_var  # no digit right
    assert abs(naive - exact) / exact > 0.1, (naive, exact)

    ours_var = class_stats(x, y, k).variances().numpy()
    ours = collapse_metrics(x, y)["cdnv"]
    assert np.abs(ours_var - exact_var).max() / exact_var.min() < 1e-6
    assert abs(ours - exact) / exact < 1e-6, (ours, exact)


def test_degenerate_classes_and_coincident_pairs_are_excluded_and_counted():
    x, y = random_split(9, c=6)
    keep = y < 4  # classes 0-3 keep their samples
    x, y = x[keep], y[keep]
    dup = y == 0
    x = torch.cat([x, x[dup], x[y == 1][:1]])  # class 4 duplicates class 0; class 5 has one
    y = torch.cat([y, torch.full((int(dup.sum()),), 4), torch.tensor([5])])
    stats = class_stats(x, y, 8)  # classes 6, 7 empty
    res = cdnv(stats, return_matrix=True)
    assert res.excluded_classes == 3  # 5 (one sample), 6, 7 (none)
    assert res.excluded_pairs == 1  # (0, 4)
    assert res.num_pairs == 10 - 1
    pairs = cdnv_pairs(x.numpy(), y.numpy(), 8)
    assert (0, 4) not in pairs
    assert res.mean == pytest.approx(np.mean(list(pairs.values())), rel=RTOL)
    assert np.isnan(res.worst[5:].numpy()).all() and (res.worst_partner[5:] == -1).all()
    assert res.matrix is not None and torch.isnan(res.matrix[0, 4])
    out = collapse_metrics(x, y, num_classes=8)
    assert out["excluded_classes"] == 3 and out["excluded_pairs"] == 1
    assert out["nc1"] == pytest.approx(nc_refs(x.numpy(), y.numpy(), 8)["nc1"], rel=RTOL)


def test_too_few_classes_give_nan_not_an_error():
    x, y = random_split(10, c=3)
    out = collapse_metrics(x[y == 0], y[y == 0])
    assert np.isnan(out["cdnv"]) and np.isnan(out["nc1"]) and np.isnan(out["cdnv_dir"])
    singles = collapse_metrics(x[:3], torch.arange(3), classifier_weight=torch.ones(3, 12))
    assert singles["excluded_classes"] == 3 and np.isnan(singles["nc3"])
    empty = collapse_metrics(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert np.isnan(empty["cdnv"]) and empty["excluded_classes"] == 1


def test_close_means_keep_their_precision():
    """Two means 1e-7 apart on an offset of norm 1e3: the plain Gram formula on raw means
    would lose everything, the centred-and-refined distances are exact."""
    g = torch.Generator().manual_seed(11)
    means = 1e3 + torch.randn(6, 8, generator=g, dtype=torch.float64)
    means[1] = means[0] + 1e-7 * torch.randn(8, generator=g, dtype=torch.float64)
    dist = pairwise_sq_distances(means)
    direct = ((means[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    torch.testing.assert_close(dist, direct, rtol=1e-12, atol=0)
    raw = means @ means.T
    sq = raw.diagonal()
    naive = sq[0] + sq[1] - 2 * raw[0, 1]
    assert abs(naive - direct[0, 1]) / direct[0, 1] > 1.0  # what centring + refinement avoids
