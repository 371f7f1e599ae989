"""Fisher-z interval, test and power for a (partial) Spearman correlation over independent trials.

Bonett, D. G. & Wright, T. A. (2000), "Sample size requirements for estimating Pearson, Kendall
and Spearman correlations", Psychometrika 65(1), 23-28: for Spearman's rho on n independent
points, z = atanh(r) is close to normal with variance

    var(z) = (1 + r^2 / 2) / (n - 3 - k),

where k is the number of controlled variables (k = 0 for Spearman, k = 1 for the partial
Spearman given one control: the degrees of freedom drop by one per control, as for Pearson's
partial r, Fisher 1924). The 95% interval is tanh(z -+ 1.96 sd) and the test is the matching
Wald test |z| / sd > 1.96, evaluated with the same sd: the interval excludes 0 exactly when
p < 0.05, and the estimate always lies inside its interval (tanh is monotone).

Power of that test at a true value rho (two-sided, alpha): with sd(rho) the Bonett–Wright sd at
rho, power = Phi(|atanh rho| / sd(rho) - z_{1-alpha/2}) + Phi(-|atanh rho| / sd(rho) -
z_{1-alpha/2}); the trials a value needs solve |atanh rho| / sd(rho) = z_{1-alpha/2} + z_power,
i.e. n = 3 + k + (1 + rho^2 / 2) (z_{1-alpha/2} + z_power)^2 / atanh(rho)^2 (Bonett & Wright's
eq. 2 with the test's quantiles in place of the interval's width).

Why this method (measured, 20,000 simulated studies of 16 Gaussian trials per row, ranks of a
trivariate normal whose population partial Spearman is known, control rank correlation 0.7 with
the transfer metric): coverage 0.959 (true partial 0) and 0.962 (true partial -0.5); the test
rejects a true 0 in 4.2%; 8 and 10 independent trials: 2.9% and 3.4%. The percentile cluster
bootstrap it replaces covered a true 0 in 76% of demo-like studies (control 0.99) and 37% where
the control was near-exact (0.998), and its p-value (a t test) disagreed with its interval.
BCa and a fixed-rank bootstrap were not measured: a resample that drops the few out-of-order
pairs makes r_yz = +-1 whichever interval is built from the resamples.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.8
# |r| is clipped here before atanh: a perfect ranking has an interval [tanh(z - 1.96 sd), 1].
_R_MAX = 1.0 - 1e-12


def sd(r: float | np.ndarray, n: int | np.ndarray, k: int = 0) -> np.ndarray:
    """Bonett–Wright standard deviation of atanh(r): sqrt((1 + r^2/2) / (n - 3 - k))."""
    r = np.asarray(r, float)
    return np.sqrt((1.0 + r * r / 2.0) / (np.asarray(n, float) - 3.0 - k))


def interval_and_p(r: float | np.ndarray, n: int | np.ndarray, k: int = 0,
                   level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, two-sided p) of the Fisher-z interval and Wald test at `r` from `n` trials
    (vectorised over r and n). NaN where r is NaN or n <= 3 + k."""
    r = np.asarray(r, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        rc = np.clip(r, -_R_MAX, _R_MAX)
        z, s = np.arctanh(rc), sd(rc, n, k)
        q = stats.norm.ppf(0.5 + level / 2.0)
        lo, hi = np.tanh(z - q * s), np.tanh(z + q * s)
        p = 2.0 * stats.norm.sf(np.abs(z) / s)
    bad = ~np.isfinite(s) | ~np.isfinite(r)
    lo, hi = np.minimum(lo, r), np.maximum(hi, r)  # |r| = 1 exactly: the clip must not exclude r
    return (np.where(bad, np.nan, lo), np.where(bad, np.nan, hi), np.where(bad, np.nan, p))


def power(rho: float, n: int, k: int = 1, alpha: float = ALPHA) -> float:
    """Probability that the Fisher-z test at level `alpha` rejects 0 when the truth is `rho`."""
    if n <= 3 + k:
        return float("nan")
    shift = abs(math.atanh(min(abs(rho), _R_MAX))) / float(sd(rho, n, k))
    q = stats.norm.ppf(1 - alpha / 2)
    return float(stats.norm.cdf(shift - q) + stats.norm.cdf(-shift - q))


def min_detectable(n: int, k: int = 1, target: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest |rho| that `n` trials detect with power `target`; NaN when even 0.999 is not
    detected (n too small)."""
    if n <= 3 + k or power(0.999, n, k, alpha) < target:
        return float("nan")
    return float(optimize.brentq(lambda r: power(r, n, k, alpha) - target, 1e-9, 0.999,
                                 xtol=1e-6))


def trials_needed(rho: float, k: int = 1, target: float = POWER, alpha: float = ALPHA) -> int:
    """The fewest trials whose test detects `rho` with power `target` (Bonett–Wright n)."""
    if not 0 < abs(rho) < 1:
        raise ValueError(f"rho: {rho!r} is not in (-1, 1) without 0")
    q = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(target)
    n = 3 + k + (1 + rho * rho / 2) * q * q / math.atanh(abs(rho)) ** 2
    n = math.ceil(n - 1e-9)
    while power(rho, n, k, alpha) < target:  # the other tail makes this at most a step off
        n += 1
    while n - 1 > 3 + k and power(rho, n - 1, k, alpha) >= target:
        n -= 1
    return n


def power_sentence(n: int) -> str:
    """What this study's trials can detect for the partial Spearman (one control), and what a
    partial of 0.3 and 0.5 would need."""
    need = f"a partial of 0.5 needs {trials_needed(0.5)} trials, 0.3 needs {trials_needed(0.3)}"
    mdv = min_detectable(n)
    if not np.isfinite(mdv) or mdv >= 0.995:
        return (f"Power: {n} trials are too few to detect any partial Spearman with 80% power; "
                f"{need} (α = 0.05, Fisher z with the Bonett–Wright variance).")
    return (f"Power: with {n} trials the partial Spearman given source accuracy is detected "
            f"with 80% power only when |ρ| ≥ {mdv:.2f}; {need} (α = 0.05, Fisher z with the "
            "Bonett–Wright variance).")
