"""NC1-NC4 against slow references and on known geometry; collapse_metrics as trainables call it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.measure.collapse import collapse_metrics, nc1, nc2_equiangle, nc2_equinorm, nc3, nc4
from analysis.measure.collapse_stats import class_stats

try:
    from tests.analysis.measure.collapse_refs import cdnv_pairs, nc4_ref, nc_refs
except ImportError:  # tests/ without __init__.py files: pytest puts this folder on sys.path
    from collapse_refs import cdnv_pairs, nc4_ref, nc_refs  # type: ignore[no-redef]

RTOL = 1e-9


def gaussian_classes(seed: int, n: int, d: int, c: int):
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(c, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    x = means[y] + torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize(("n", "d", "c"), [(300, 20, 6), (900, 8, 30), (400, 9, 10)],
                         ids=["K<d: KxK eigenproblem", "C-1>=d: dxd", "C-1=d"])
def test_nc_metrics_match_reference(n, d, c):
    x, y = gaussian_classes(c, n, d, c)
    w = torch.randn(c, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    stats = class_stats(x, y, c, track_scatter=True)
    ref = nc_refs(x.numpy(), y.numpy(), c, weight=w.numpy())
    assert nc1(stats) == pytest.approx(ref["nc1"], rel=RTOL)
    assert nc2_equinorm(stats) == pytest.approx(ref["nc2_equinorm"], rel=RTOL)
    assert nc2_equiangle(stats) == pytest.approx(ref["nc2_equiangle"], rel=RTOL)
    assert nc3(stats, w) == pytest.approx(ref["nc3"], rel=RTOL)


def test_nc1_keeps_float32_features_exact_enough():
    x, y = gaussian_classes(3, 500, 16, 7)
    stats = class_stats(x.float(), y, 7, track_scatter=True)
    ref = nc_refs(x.float().numpy(), y.numpy(), 7)  # the same float32 values, in float64
    assert nc1(stats) == pytest.approx(ref["nc1"], rel=RTOL)


def test_nc4_matches_reference_and_counts_disagreements():
    x, y = gaussian_classes(4, 300, 10, 5)
    g = torch.Generator().manual_seed(5)
    logits = x @ torch.randn(10, 5, generator=g, dtype=torch.float64)
    centres = class_stats(x, y, 5).means
    got = nc4(x, logits, centres, chunk_rows=64)
    assert got == pytest.approx(nc4_ref(x.numpy(), logits.numpy(), centres.numpy()), abs=0)
    assert 0.0 < got < 1.0
    dist = torch.cdist(x, centres)  # a classifier that is the nearest-centre rule: NC4 = 0
    assert nc4(x, -dist, centres) == 0.0
    assert nc4(x, dist, centres) == 1.0  # the farthest centre: always disagrees


def test_nc4_centres_of_absent_classes_are_never_nearest():
    x, y = gaussian_classes(6, 200, 6, 4)
    stats = class_stats(x, y, 5)  # class 4 has no samples: its mean row is 0
    dist = torch.cdist(x, stats.means[:4])
    logits = torch.cat([-dist, torch.full((200, 1), -1e9, dtype=torch.float64)], 1)
    assert nc4(x, logits, stats.means, present=stats.counts > 0) == 0.0


def test_nc_metrics_on_simplex_etf():
    """Centred means a*(e_c - 1/K) form a simplex ETF; W = 2.5 * centred means is self-dual."""
    k, d, a = 4, 8, 4.0
    eye = torch.eye(d)
    rows = [a * eye[c] + s * 0.5 * eye[m] for c in range(k) for m in range(d) for s in (1, -1)]
    x, y = torch.stack(rows), torch.arange(k).repeat_interleave(2 * d)
    stats = class_stats(x, y, k, track_scatter=True)
    centred = stats.means - stats.means.mean(0)
    assert nc2_equinorm(stats) == 0.0
    assert nc2_equiangle(stats) == pytest.approx(0.0, abs=1e-15)
    assert nc3(stats, 2.5 * centred) == pytest.approx(0.0, abs=1e-15)
    assert nc3(stats, -centred) == pytest.approx(4.0, rel=1e-15)
    assert nc1(stats) == pytest.approx(0.25 * (k - 1) / (d * a**2), rel=1e-13)
    logits = x @ stats.means.T.float()
    assert nc4(x, logits, stats.means) == 0.0


def test_collapse_metrics_has_the_contract_keys_and_reference_values():
    x, y = gaussian_classes(7, 400, 12, 8)
    x32 = x.float()
    w = torch.randn(8, 12, generator=torch.Generator().manual_seed(8))
    logits = x32 @ w.T
    out = collapse_metrics(x32, y, classifier_weight=w, logits=logits)
    assert set(out) == {"cdnv", "cdnv_dir", "cdnv_unbiased", "cdnv_median", "nc1",
                        "nc2_equinorm", "nc2_equiangle", "nc3", "nc4", "excluded_classes",
                        "excluded_pairs"}
    assert all(isinstance(v, float) for v in out.values())
    xn, yn = x32.numpy(), y.numpy()
    ref = nc_refs(xn, yn, 8, weight=w.numpy())
    for key in ("nc1", "nc2_equinorm", "nc2_equiangle", "nc3"):
        assert out[key] == pytest.approx(ref[key], rel=RTOL), key
    plain = list(cdnv_pairs(xn, yn, 8).values())
    assert out["cdnv"] == pytest.approx(np.mean(plain), rel=RTOL)
    assert out["cdnv_median"] == pytest.approx(np.median(plain), rel=RTOL)
    assert out["cdnv_unbiased"] == pytest.approx(
        np.mean(list(cdnv_pairs(xn, yn, 8, unbiased=True).values())), rel=RTOL)
    assert out["cdnv_dir"] == pytest.approx(
        np.mean(list(cdnv_pairs(xn, yn, 8, directional=True).values())), rel=RTOL)
    means = class_stats(x32, y, 8).means
    assert out["nc4"] == nc4_ref(xn, logits.numpy(), means.numpy())
    train_means = means + 0.5  # NC4 against another split's centres
    other = collapse_metrics(x32, y, logits=logits, means_for_nc4=train_means)
    assert other["nc4"] == nc4_ref(xn, logits.numpy(), train_means.numpy())
    assert "nc3" not in other


@pytest.mark.gpu
def test_cuda_features_give_the_cpu_values():
    x, y = gaussian_classes(9, 2000, 64, 20)
    x32 = x.float()
    w = torch.randn(20, 64)
    logits = x32 @ w.T
    cpu = collapse_metrics(x32, y, classifier_weight=w, logits=logits)
    gpu = collapse_metrics(x32.cuda(), y.cuda(), classifier_weight=w.cuda(),
                           logits=logits.cuda())
    for key, value in cpu.items():
        assert gpu[key] == pytest.approx(value, rel=1e-9), key
