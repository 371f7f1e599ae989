"""Bad input to the collapse statistics and metrics: one ValueError that names the problem."""

from __future__ import annotations

import pytest
import torch

from analysis.errors import InputError
from analysis.measure.collapse import (
    ClassStatsAccumulator,
    cdnv_directional,
    collapse_metrics,
    nc1,
    nc3,
    nc4,
)
from analysis.measure.collapse_stats import class_stats


def data(n: int = 40, d: int = 5, c: int = 4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g), torch.arange(n) % c


@pytest.mark.parametrize(("bad", "where"), [(float("nan"), (3, 1)), (float("inf"), (7, 0)),
                                            (float("-inf"), (0, 4))])
def test_non_finite_features_are_rejected_with_their_row(bad, where):
    x, y = data()
    x[where] = bad
    with pytest.raises(ValueError, match=rf"non-finite.*NaN or inf.*first at row {where[0]}"):
        ClassStatsAccumulator(4).update(x, y)
    with pytest.raises(ValueError, match="non-finite"):
        collapse_metrics(x, y)


@pytest.mark.parametrize(("label", "text"), [(4, r"max 4; allowed \[0, 4\)"),
                                             (-1, r"min -1.*allowed \[0, 4\)")])
def test_labels_out_of_range_are_rejected(label, text):
    x, y = data()
    y[5] = label
    with pytest.raises(ValueError, match=rf"labels out of range.*{text}"):
        ClassStatsAccumulator(4).update(x, y)
    with pytest.raises(ValueError, match="labels out of range"):
        collapse_metrics(x, y, num_classes=4)


def test_negative_labels_are_rejected_without_num_classes():
    x, y = data()
    y[0] = -3
    with pytest.raises(ValueError, match="labels out of range: min -3"):
        collapse_metrics(x, y)


def test_labels_beyond_the_classifier_are_rejected():
    x, y = data()
    with pytest.raises(ValueError, match=r"max 3; allowed \[0, 3\)"):
        collapse_metrics(x, y, classifier_weight=torch.zeros(3, 5))


def test_mismatched_lengths_are_rejected():
    x, y = data()
    with pytest.raises(ValueError, match="differ in length: 40 feature rows but 39 labels"):
        ClassStatsAccumulator(4).update(x, y[:-1])
    with pytest.raises(ValueError, match="differ in length"):
        collapse_metrics(x[:-2], y)


@pytest.mark.parametrize(("features", "labels", "text"), [
    (torch.zeros(10), torch.zeros(10, dtype=torch.int64), r"2-D.*got shape \(10,\)"),
    (torch.zeros(10, 3, dtype=torch.int64), torch.zeros(10, dtype=torch.int64), "floating"),
    (torch.zeros(10, 3), torch.zeros(10), r"integer.*torch.float32"),
    (torch.zeros(10, 3), torch.zeros(10, 1, dtype=torch.int64), r"1-D integer.*\(10, 1\)"),
])
def test_wrong_shapes_and_dtypes_are_rejected(features, labels, text):
    with pytest.raises(ValueError, match=text):
        ClassStatsAccumulator(4).update(features, labels)


def test_a_batch_of_another_dimension_is_rejected():
    x, y = data()
    acc = ClassStatsAccumulator(4).update(x, y)
    with pytest.raises(ValueError, match="dimension d=6; expected d=5"):
        acc.update(torch.zeros(3, 6), torch.zeros(3, dtype=torch.int64))


def test_merge_rejects_mismatched_accumulators():
    x, y = data()
    acc = ClassStatsAccumulator(4).update(x, y)
    with pytest.raises(ValueError, match="num_classes=5 into num_classes=4"):
        acc.merge(ClassStatsAccumulator(5))
    with pytest.raises(ValueError, match="track_scatter=True"):
        acc.merge(ClassStatsAccumulator(4, track_scatter=True))
    other = ClassStatsAccumulator(4).update(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="dimension d=3 into d=5"):
        acc.merge(other)


def test_no_batches_and_no_classes_are_rejected():
    with pytest.raises(ValueError, match="no features were added"):
        ClassStatsAccumulator(4).result()
    with pytest.raises(ValueError, match="num_classes must be >= 1; got 0"):
        ClassStatsAccumulator(0)


def test_metric_arguments_are_checked():
    x, y = data()
    stats = class_stats(x, y, 4)
    with pytest.raises(ValueError, match="track_scatter=True"):
        nc1(stats)
    with pytest.raises(ValueError, match=r"classifier_weight must have shape.*\(4, 5\).*\(5, 4\)"):
        nc3(stats, torch.zeros(5, 4))
    with pytest.raises(ValueError, match="classifier_weight contains non-finite"):
        nc3(stats, torch.full((4, 5), float("nan")))
    with pytest.raises(ValueError, match=r"logits must have shape \(N, C\) with N=40"):
        nc4(x, torch.zeros(39, 4), stats.means)
    with pytest.raises(ValueError, match=r"centres must have shape \(C, d\) = \(4, 5\)"):
        nc4(x, torch.zeros(40, 4), stats.means[:3])
    with pytest.raises(ValueError, match="logits and centres must be finite"):
        nc4(x, torch.full((40, 4), float("nan")), stats.means)
    with pytest.raises(ValueError, match="per-class counts differ"):
        cdnv_directional(x[:-4], y[:-4], stats)


def test_errors_are_the_projects_input_error():
    x, y = data()
    with pytest.raises(InputError):
        collapse_metrics(x, y[:3])
