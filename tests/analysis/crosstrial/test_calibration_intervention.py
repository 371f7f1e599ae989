"""Calibration of "Does moving collapse move transfer?" (issue 23), through the real functions.

Simulated intervention studies shaped like the collapse-control preset (6 levels x 3 seeds):
the level moves collapse x strongly; transfer y either ignores x (the null: a control that moves
collapse but not transfer) or follows y = beta x + noise (a known effect). 2,000 studies per
scenario, vectorised in `iv_anova`; the sentences from `iv_sentences` for each.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.crosstrial.intervention import (
    claims_effect,
    iv_anova,
    iv_sentences,
    level_effects,
)

S = 2000
LEVELS = np.repeat(np.arange(6), 3)
SHIFT = np.array([0.3, 0.0, -0.1, -0.3, -0.5, -0.8])  # log10 CDNV per level: mitigate -> induce


def _studies(rng, beta, x_noise=0.1, y_noise=0.02, shift=SHIFT):
    x = shift[LEVELS] + x_noise * rng.standard_normal((S, len(LEVELS)))
    y = 0.8 + beta * x + y_noise * rng.standard_normal((S, len(LEVELS)))
    return x, y


def _lines(r, i):
    return iv_sentences(float(r.first_f[i]), float(r.reduced_p[i]), float(r.beta[i]),
                        float(r.ar_low[i]), float(r.ar_high[i]), str(r.ar_kind[i]),
                        x_name="x", y_name="y", n=r.n, k=r.k)


def _covers(r, beta):
    kind = r.ar_kind
    inside = np.where(kind == "interval", (r.ar_low <= beta) & (beta <= r.ar_high),
                      np.where(kind == "rays", (beta <= r.ar_low) | (beta >= r.ar_high),
                               kind == "all"))
    return inside.astype(bool)


def test_no_effect_is_claimed_in_at_most_6_percent_under_the_null():
    rng = np.random.default_rng(0)
    x, y = _studies(rng, beta=0.0)
    r = iv_anova(x, y, LEVELS)
    assert np.median(r.first_f) > 10  # the manipulation is strong: the claim is possible
    rate = np.mean([claims_effect(_lines(r, i)) for i in range(S)])
    assert rate <= 0.06, rate


def test_the_preset_design_under_the_null_with_a_side_effect_on_transfer_noise():
    """The collapse-control preset's design (4 levels x 3 seeds), transfer noise that differs
    by level in scale but not in mean: still at most 6% false claims."""
    rng = np.random.default_rng(6)
    levels = np.repeat(np.arange(4), 3)
    x = np.array([0.0, 0.25, -0.3, -0.05])[levels] + 0.05 * rng.standard_normal((S, 12))
    y = 0.9 + np.array([0.01, 0.02, 0.01, 0.015])[levels] * rng.standard_normal((S, 12))
    r = iv_anova(x, y, levels)
    lines = [iv_sentences(float(r.first_f[i]), float(r.reduced_p[i]), float(r.beta[i]),
                          float(r.ar_low[i]), float(r.ar_high[i]), str(r.ar_kind[i]),
                          x_name="x", y_name="y", n=r.n, k=r.k) for i in range(S)]
    rate = np.mean([claims_effect(ls) for ls in lines])
    assert rate <= 0.06, rate


def test_a_weak_manipulation_says_too_weak_and_claims_nothing():
    rng = np.random.default_rng(1)
    x, y = _studies(rng, beta=0.1, shift=SHIFT * 0.02)
    r = iv_anova(x, y, LEVELS)
    lines = [_lines(r, i) for i in range(S)]
    weak = r.first_f < 10
    assert weak.mean() > 0.9
    assert all(ls[0].startswith("The manipulation was too weak") for ls, w in zip(lines, weak,
                                                                                   strict=True)
               if w)
    assert np.mean([claims_effect(ls) for ls in lines]) <= 0.06


@pytest.mark.parametrize("beta", [0.05, -0.1])
def test_the_anderson_rubin_set_covers_a_known_effect(beta):
    rng = np.random.default_rng(2)
    x, y = _studies(rng, beta=beta)
    r = iv_anova(x, y, LEVELS)
    coverage = _covers(r, beta).mean()
    assert 0.93 <= coverage <= 0.97, coverage
    assert abs(np.median(r.beta) - beta) < 0.01


def test_a_known_effect_is_found_and_signed():
    rng = np.random.default_rng(3)
    x, y = _studies(rng, beta=-0.1)
    r = iv_anova(x, y, LEVELS)
    lines = [_lines(r, i) for i in range(S)]
    found = np.mean([claims_effect(ls) and "lowered" in ls[0] for ls in lines])
    assert found > 0.9, found


def test_level_effect_intervals_cover_at_95_percent():
    rng = np.random.default_rng(4)
    x, _ = _studies(rng, beta=0.0)
    hits = []
    for i in range(300):
        for level, _, lo, hi, _ in level_effects(x[i], LEVELS, 1):
            hits.append(lo <= SHIFT[level] - SHIFT[1] <= hi)
    assert 0.93 <= np.mean(hits) <= 0.97, np.mean(hits)


def test_against_a_slow_reference():
    """F statistics from scipy's one-way ANOVA, 2SLS from the Wald ratio with two levels,
    and the AR set's end points by scanning b and testing y - b x one b at a time."""
    from scipy import stats

    rng = np.random.default_rng(5)
    x, y = _studies(rng, beta=0.07)
    r = iv_anova(x[:2], y[:2], LEVELS)
    for i in range(2):
        f_x = stats.f_oneway(*[x[i][g == LEVELS] for g in range(6)]).statistic
        f_y = stats.f_oneway(*[y[i][g == LEVELS] for g in range(6)])
        assert r.first_f[i] == pytest.approx(f_x)
        assert r.reduced_f[i] == pytest.approx(f_y.statistic)
        assert r.reduced_p[i] == pytest.approx(f_y.pvalue)
        grid = np.linspace(r.beta[i] - 0.3, r.beta[i] + 0.3, 3001)
        keep = [b for b in grid if stats.f_oneway(*[(y[i] - b * x[i])[g == LEVELS]
                                                    for g in range(6)]).pvalue >= 0.05]
        assert r.ar_kind[i] == "interval"
        assert r.ar_low[i] == pytest.approx(min(keep), abs=2e-4)
        assert r.ar_high[i] == pytest.approx(max(keep), abs=2e-4)
    two = LEVELS < 2
    r2 = iv_anova(x[0][two], y[0][two], LEVELS[two])
    wald = (y[0][LEVELS == 1].mean() - y[0][LEVELS == 0].mean()) / (
        x[0][LEVELS == 1].mean() - x[0][LEVELS == 0].mean())
    assert r2.beta[0] == pytest.approx(wald)
