"""analysis.crosstrial.fisherz: the Fisher-z interval and test against a slow reference, known
answers, and the power figures against a simulation through `correlate.correlate`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize

from analysis.crosstrial import correlate as corr
from analysis.crosstrial import fisherz


def _slow(r: float, n: int, k: int) -> tuple[float, float, float]:
    sd = math.sqrt((1 + r * r / 2) / (n - 3 - k))
    z = math.atanh(r)
    phi = lambda t: 0.5 * (1 + math.erf(t / math.sqrt(2)))  # noqa: E731
    return math.tanh(z - 1.959963984540054 * sd), math.tanh(z + 1.959963984540054 * sd), \
        2 * (1 - phi(abs(z) / sd))


@pytest.mark.parametrize("k", [0, 1])
def test_interval_and_test_equal_the_formula_and_agree(k: int) -> None:
    rs = np.linspace(-0.99, 0.99, 199)
    for n in (5, 8, 16, 40):
        lo, hi, p = fisherz.interval_and_p(rs, n, k)
        for i, r in enumerate(rs):
            assert (lo[i], hi[i], p[i]) == pytest.approx(_slow(float(r), n, k), abs=1e-9)
        assert np.array_equal((lo > 0) | (hi < 0), p < 0.05)  # one method: never contradict
        assert np.all((lo <= rs) & (rs <= hi))


def test_known_answers() -> None:
    lo, hi, p = fisherz.interval_and_p(0.0, 16, 1)
    assert p == pytest.approx(1.0) and hi == pytest.approx(math.tanh(1.959964 / math.sqrt(12)))
    assert lo == pytest.approx(-hi)
    assert all(np.isnan(v) for v in fisherz.interval_and_p(0.3, 4, 1))  # n - 4 = 0
    assert fisherz.interval_and_p(1.0, 16, 0)[1] == pytest.approx(1.0)
    # Without the r^2/2 term and with k = 0 this is the textbook n for rho = 0.3 (Cohen 1988:
    # 85); Bonett-Wright's (1 + 0.045) and the one control add 4-5 trials.
    assert fisherz.trials_needed(0.3, k=0) in (88, 89)
    assert fisherz.trials_needed(0.5) == 34 and fisherz.trials_needed(0.3) == 90


def test_trials_needed_and_min_detectable_invert_power() -> None:
    for rho in (0.2, 0.3, 0.5, 0.7):
        n = next(m for m in range(6, 2000) if fisherz.power(rho, m) >= 0.8)  # brute force
        assert fisherz.trials_needed(rho) == n
    for n in (8, 16, 30):
        mdv = fisherz.min_detectable(n)
        assert fisherz.power(mdv, n) == pytest.approx(0.8, abs=1e-4)
    assert np.isnan(fisherz.min_detectable(4))
    assert "too few" in fisherz.power_sentence(5) and "0.72" in fisherz.power_sentence(16)


def _study_with_partial(target: float, n: int, n_studies: int, seed: int) -> np.ndarray:
    """Gaussian studies whose population partial Spearman given z is `target` (corr 0.5 each)."""
    s = lambda r: 6 / np.pi * np.arcsin(r / 2)  # noqa: E731

    def partial_spearman(p: float) -> float:
        rxy = p * 0.75 + 0.25
        a = s(0.5)
        return (s(rxy) - a * a) / (1 - a * a) - target

    p = optimize.brentq(partial_spearman, -0.99, 0.99)
    rxy = p * 0.75 + 0.25
    cov = np.array([[1, rxy, 0.5], [rxy, 1, 0.5], [0.5, 0.5, 1]])
    return np.random.default_rng(seed).multivariate_normal(np.zeros(3), cov, size=(n_studies, n))


@pytest.mark.parametrize(("n", "rho"), [(16, None), (fisherz.trials_needed(0.5), 0.5)])
def test_power_matches_a_simulation(n: int, rho: float | None) -> None:
    rho = fisherz.min_detectable(n) if rho is None else rho
    data = _study_with_partial(rho, n, 600, seed=n)
    rejected = [corr.correlate(d[:, 0], d[:, 1], control=d[:, 2], methods=("partial_spearman",),
                               n_boot=200, seed=i)["partial_spearman"].p_value < 0.05
                for i, d in enumerate(data)]
    assert np.mean(rejected) == pytest.approx(0.8, abs=0.07)
