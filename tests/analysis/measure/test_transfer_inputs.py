"""The estimators' entry point refuses input no estimator can use, with one clear error that
names the estimators and the input: never a silent NaN or a misleading LinAlgError."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analysis.contract import ESTIMATORS
from analysis.errors import InputError
from analysis.measure.transfer import transfer_metrics
from tests.analysis.measure.test_transfer import blobs

FEATURE_ESTIMATORS = [n for n in ESTIMATORS if n not in ("leep", "nce")]


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    f, y = blobs(classes=5, per=10, dim=12, spread=1.5)
    logits = f @ np.random.default_rng(4).normal(size=(12, 7))
    return torch.as_tensor(f), torch.as_tensor(y), torch.as_tensor(logits)


def test_nan_logits_are_refused_for_leep_and_nce_naming_them():
    f, y, logits = data()
    logits[3, 2] = math.nan
    for name in ("leep", "nce"):
        with pytest.raises(InputError, match=rf"\['{name}'\]: the logits hold 1 non-finite"):
            transfer_metrics(f, y, logits, [name])
    # estimators that do not read the logits are unaffected
    assert math.isfinite(transfer_metrics(f, y, logits, ["logme"])["logme"])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("name", FEATURE_ESTIMATORS)
def test_non_finite_features_are_refused_naming_the_estimator(name, bad):
    f, y, logits = data()
    f[7, 0] = bad
    with pytest.raises(InputError, match=rf"\['{name}'\]: the features hold 1 non-finite "
                                         r"values \(NaN or inf\) in 1 of 50"):
        transfer_metrics(f, y, logits, [name])


def test_non_finite_features_do_not_stop_the_logit_estimators():
    f, y, logits = data()
    f[:] = math.nan
    out = transfer_metrics(f, y, logits, ["leep", "nce"])
    assert all(math.isfinite(v) for v in out.values())


@pytest.mark.parametrize("name", FEATURE_ESTIMATORS)
def test_constant_features_are_one_clear_error(name):
    f, y, logits = data()
    f[:] = 0.25
    with pytest.raises(InputError, match=rf"\['{name}'\]: the features are the same for all 50"):
        transfer_metrics(f, y, logits, [name])


def test_one_error_lists_every_estimator_that_reads_the_bad_input():
    f, y, logits = data()
    f[0, 0] = math.nan
    with pytest.raises(InputError, match=r"\['logme', 'sfda'\]: the features"):
        transfer_metrics(f, y, logits, ["leep", "logme", "sfda"])


def test_non_finite_float_labels_are_refused():
    f, y, logits = data()
    labels = y.to(torch.float64)
    labels[2] = math.nan
    with pytest.raises(InputError, match="the labels hold 1 non-finite"):
        transfer_metrics(f, labels, logits, ["knn"])


def test_features_collapsed_to_rounding_are_refused_not_rounding_noise_times_1e16():
    """An exact simplex ETF (every image on its class mean): NCTI would whiten by a zero
    within-class scatter (the authors' code returns S_seli ~ 1e17) and SFDA gives NaN at a
    large scale; both are refused by name, the estimators defined there still answer."""
    from tests.analysis.measure.test_transfer import simplex_etf

    f, y = simplex_etf(5, 6)
    for scale in (1.0, 30.0):
        with pytest.raises(InputError, match=r"NCTI \(ncti_seli, ncti_ncc, ncti_vc\): the "
                                             r"features sit on their class means"):
            transfer_metrics(torch.as_tensor(scale * f), torch.as_tensor(y), None, ["ncti_seli"])
    with pytest.raises(InputError, match="'sfda' gave nan"):
        transfer_metrics(torch.as_tensor(30 * f), torch.as_tensor(y), None, ["sfda"])
    out = transfer_metrics(torch.as_tensor(30 * f), torch.as_tensor(y), None,
                           ["logme", "hscore", "gbc", "knn"])
    assert all(math.isfinite(v) for v in out.values())
