"""Per-tap statistics: NC1 without the scatter equals NC1 with it and the slow reference; the
tap bundle equals the slow references on the same features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.measure.collapse_nc import nc1
from analysis.measure.collapse_stats import class_stats
from analysis.measure.layer_stats import nc1_projected, tap_statistics
from tests.analysis.measure.collapse_refs import cdnv_pairs, nc_refs
from tests.analysis.measure.test_rank import _reference as erank_reference


def _features(classes: int, per_class: int, dim: int,
              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(classes, dim, generator=g, dtype=torch.float64)
    y = torch.arange(classes).repeat_interleave(per_class)
    scale = torch.rand(dim, generator=g, dtype=torch.float64) + 0.2  # anisotropic noise
    return means[y] + torch.randn(len(y), dim, generator=g, dtype=torch.float64) * scale, y


# K <= d, K > d (the d x d eigenproblem), d > N (a wide early layer: more dims than images)
@pytest.mark.parametrize(("classes", "per_class", "dim"), [(6, 10, 20), (30, 8, 5), (5, 3, 64)])
def test_nc1_projected_equals_the_scatter_route_and_the_reference(
        classes: int, per_class: int, dim: int) -> None:
    x, y = _features(classes, per_class, dim, seed=classes + dim)
    with_scatter = class_stats(x, y, classes, track_scatter=True)
    projected = nc1_projected(x, y, class_stats(x, y, classes))
    assert projected == pytest.approx(nc1(with_scatter), rel=1e-9)
    assert projected == pytest.approx(nc_refs(x.numpy(), y.numpy(), classes)["nc1"], rel=1e-7)


def test_nc1_projected_skips_classes_with_one_sample() -> None:
    x, y = _features(5, 6, 12, seed=1)
    x = torch.cat([x, torch.randn(1, 12, dtype=torch.float64)])
    y = torch.cat([y, torch.tensor([5])])
    stats = class_stats(x, y, 6, track_scatter=True)
    assert nc1_projected(x, y, stats) == pytest.approx(nc1(stats), rel=1e-9)


def test_tap_statistics_equal_the_slow_references() -> None:
    x, y = _features(7, 9, 16, seed=3)
    x32 = x.float()  # taps are float32
    got = tap_statistics(x32, y, 7)
    x64 = x32.double().numpy()
    assert got["cdnv"] == pytest.approx(np.mean(list(cdnv_pairs(x64, y.numpy(), 7).values())),
                                        rel=1e-9)
    assert got["cdnv_unbiased"] == pytest.approx(
        np.mean(list(cdnv_pairs(x64, y.numpy(), 7, unbiased=True).values())), rel=1e-9)
    assert got["nc1"] == pytest.approx(nc_refs(x64, y.numpy(), 7)["nc1"], rel=1e-7)
    assert got["erank"] == pytest.approx(erank_reference(x64), rel=1e-6)
    assert set(got) == {"cdnv", "cdnv_unbiased", "nc1", "erank"}


def test_collapsed_features_have_small_cdnv_and_rank_at_most_classes() -> None:
    """Known answer: features exactly at 4 class means (no spread) have CDNV 0, NC1 0, and an
    effective rank of at most 4 (the means span at most 4 directions)."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(4, 10, generator=g, dtype=torch.float64)
    y = torch.arange(4).repeat_interleave(5)
    got = tap_statistics(means[y], y, 4)
    assert got["cdnv"] == pytest.approx(0.0, abs=1e-20)
    assert got["nc1"] == pytest.approx(0.0, abs=1e-12)
    assert 1.0 <= got["erank"] <= 4.0 + 1e-9
