"""Metric descriptors: every name the contract can build is described once, the right way round."""

from __future__ import annotations

import pytest

from analysis import contract as names
from analysis import descriptors

FULL = names.MetricSpec(shapes=("5w1s", "5w5s", "20w5s"), classifiers=("ncc", "ncc_l2",
                        "ncc_raw", "logreg"), taps=("act1", "layer1", "layer4"),
                        layer_splits=names.SPLITS, estimators=names.ESTIMATORS,
                        control_losses=names.CONTROL_LOSSES)


def test_every_name_the_contract_builds_has_a_descriptor():
    missing = [n for n in names.all_names(FULL) if names.descriptor(n) is None]
    assert not missing
    assert set(names.CONTROL_LOSSES) <= names.all_names(FULL)
    probed = [names.probe_key("digits", n) for n in names.all_names(FULL)]
    assert all(names.descriptor(n) is not None for n in probed)


def test_the_contracts_families_are_read_from_the_descriptors():
    assert descriptors.families("collapse") == names.COLLAPSE_FAMILIES
    assert tuple(f.split("/")[1] for f in descriptors.families("transfer")) == names.ESTIMATORS
    assert all(names.descriptor(names.collapse_key(f, s)).collapse
               for f in names.COLLAPSE_FAMILIES for s in names.SPLITS)


@pytest.mark.parametrize(("name", "way"), [
    ("cdnv/target", -1), ("nc1/source_train", -1), ("layer/layer2/cdnv/target", -1),
    ("layer/layer2/erank/target", 1), ("transfer/ncti_vc/target", -1),
    ("transfer/logme/target", 1), ("source/test_acc", 1), ("fewshot/5w5s/ncc/acc", 1),
    ("time/eval_s", 0), ("not/a/metric", 0)])
def test_direction(name, way):
    assert names.direction(name) == way


@pytest.mark.parametrize(("name", "words"), [
    ("fewshot/5w5s/ncc/acc", "5-way 5-shot NCC accuracy"),
    ("fewshot/20w1s/logreg/ci95", "20-way 1-shot log. regression accuracy's 95% half-width"),
    ("cdnv/target", "target CDNV"), ("cdnv_unbiased/source_test", "source-test CDNV (unbiased)"),
    ("layer/layer3/cdnv/target", "layer3 target CDNV"),
    ("layer/layer3/fewshot/5w5s/ncc/acc", "layer3 5-way 5-shot NCC accuracy"),
    ("transfer/knn/target", "k-NN leave-one-out accuracy (target)"),
    ("probe/digits/cdnv/target", "target CDNV on 'digits'"),
    ("bound_cantelli/5w5s", "Cantelli bound on the NCC error, 5-way 5-shot"),
    ("source/test_acc", "source test accuracy"), ("mystery", "mystery")])
def test_describe(name, words):
    assert names.describe(name) == words


def test_log_scale_is_for_collapse_and_bounds_not_accuracy():
    assert names.log_scale("cdnv/target") and names.log_scale("layer/act1/nc1/target")
    assert names.log_scale("bound/5w5s")
    assert not names.log_scale("fewshot/5w5s/ncc/acc") and not names.log_scale("mystery")


def test_a_family_is_registered_once():
    with pytest.raises(ValueError, match="'cdnv' is registered twice"):
        descriptors.register(descriptors.Descriptor("cdnv", "cdnv/<split>", "collapse", "x", -1))


def test_every_descriptor_says_which_group_and_direction():
    groups = {"training", "source", "collapse", "fewshot", "bound", "layers", "transfer"}
    for d in descriptors.REGISTRY.values():
        assert d.group in groups and d.direction in (-1, 0, 1) and d.label
        assert d.citation or d.group in ("training", "source", "layers")
