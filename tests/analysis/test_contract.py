"""The metric contract: the one shape parser, the name builders, and what a trial reports."""

from __future__ import annotations

import pytest

from analysis import contract as names
from analysis.errors import InputError


def test_shapes_parse_format_and_sort() -> None:
    assert names.parse_shape("5w1s") == (5, 1)
    assert names.parse_shape(" 20w5s ") == (20, 5)
    assert names.format_shape(7, 3) == "7w3s"
    assert names.sort_shapes(["10w1s", "5w5s", "5w1s", "5w5s"]) == ["5w1s", "5w5s", "10w1s"]


@pytest.mark.parametrize("bad", ["5w", "1w1s", "5w0s", "5W1S", "", "five"])
def test_bad_shapes_are_one_clear_error(bad: str) -> None:
    with pytest.raises(InputError, match="is not an episode shape; write <n>w<k>s"):
        names.parse_shape(bad)


def test_builders_give_the_documented_names() -> None:
    assert names.collapse_key("cdnv", "target") == "cdnv/target" == names.CDNV_TARGET
    assert names.fewshot_key("5w5s", "ncc") == "fewshot/5w5s/ncc/acc"
    assert names.fewshot_key("5w5s", "ncc", "ci95") == "fewshot/5w5s/ncc/ci95"
    assert names.bound_key("5w1s") == "bound/5w1s"
    assert names.layer_key("layer2", "cdnv", "target") == "layer/layer2/cdnv/target"
    assert names.layer_fewshot_key("layer2", "5w5s") == "layer/layer2/fewshot/5w5s/ncc/acc"
    assert names.transfer_key("logme") == "transfer/logme/target"
    assert names.probe_key("digits", "cdnv/target") == "probe/digits/cdnv/target"
    assert names.split_fewshot_key("fewshot/5w5s/ncc/acc") == ("5w5s", "ncc", "acc")


def test_trial_metrics_counts_and_groups() -> None:
    spec = names.MetricSpec(shapes=("5w1s", "5w5s"), classifiers=("ncc", "logreg"),
                            taps=("layer1", "layer2"), estimators=("logme", "knn"))
    groups = names.trial_metrics(spec)
    assert list(groups) == ["training", "source", "collapse", "fewshot", "bound", "layers",
                            "transfer"]
    assert len(groups["collapse"]) == 6 * 3
    assert len(groups["fewshot"]) == 2 * 2 * 2
    assert len(groups["layers"]) == 2 * 4 * 2 + 2 * 2
    assert groups["transfer"] == ["transfer/knn/target", "transfer/logme/target"]
    bare = names.trial_metrics(names.MetricSpec(shapes=("5w5s",), classifiers=("ncc",)))
    assert "layers" not in bare and "transfer" not in bare


def test_a_tap_that_would_break_a_name_is_refused() -> None:
    spec = names.MetricSpec(shapes=("5w5s",), classifiers=("ncc",), taps=("stage 1/a",))
    with pytest.raises(InputError, match=r"evaluation\.layers"):
        names.trial_metrics(spec)


def test_tracking_logs_contract_names_and_not_tunes_own_keys() -> None:
    spec = names.MetricSpec(shapes=("5w5s",), classifiers=("ncc",), taps=("act1",),
                            estimators=names.ESTIMATORS)
    assert all(names.is_trial_metric(n) for n in names.all_names(spec))
    for key in ("training_iteration", "time_this_iter_s", "config/lr", "probe/x/cdnv/target",
                "analysis/n_trials", "epoch"):
        assert not names.is_trial_metric(key), key
