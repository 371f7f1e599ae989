"""Does moving collapse move transfer? The analysis of a designed intervention on collapse.

A study that sets a collapse control (training.center_loss, training.feature_entropy,
training.etf_head; trainables.collapse_controls) at a few levels, several seeds each, with
everything else fixed, is a randomised experiment: the level is the instrument, collapse
x = log10 target CDNV the treatment, few-shot accuracy y the outcome. Everything here is the
one-way layout with k levels and n trials (n_l seeds at level l), normal errors with one
variance per outcome (the classical ANOVA model):

- Level effects (the manipulation check and the effects on accuracy): the difference of level
  means against the baseline level (every control off), d_l = m_l - m_0, with the t interval
  d_l +- t_{0.975, n-k} sqrt(MSW (1/n_l + 1/n_0)), MSW the pooled within-level variance
  (Scheffe, "The Analysis of Variance", 1959, ch. 3). Unadjusted: one interval per comparison.
- First stage: the one-way ANOVA F of x on the levels,
  F = [sum_l n_l (x_l - x)^2 / (k-1)] / [sum_l sum_i (x_li - x_l)^2 / (n-k)].
  Below 10 the manipulation is called too weak (Staiger & Stock, Econometrica 1997: a
  first-stage F below 10 makes 2SLS biased and its usual intervals wrong).
- The effect of collapse on transfer: the two-stage least-squares estimate with the level
  dummies as instruments, beta = sum_l n_l (x_l - x)(y_l - y) / sum_l n_l (x_l - x)^2 — the
  slope through the level means, which with two levels is the Wald ratio (y_1 - y_0)/(x_1 - x_0).
  Its 95% set is Anderson & Rubin's (Ann. Math. Stat. 1949): every b for which the ANOVA F of
  y - b x on the levels does not reject at 5%. It is exact under the model above whatever the
  first stage's strength (an interval, two rays or the whole line), and it excludes 0 exactly
  when the reduced-form F of y on the levels rejects; so "moving collapse moved transfer" is
  said with a false-claim rate of at most 5% when the control does not move transfer. (A
  percentile bootstrap over 3 seeds per level, which the issue suggested, has no such
  guarantee; this interval is the exact one for the same design.)

Assumption, printed with the estimate: the control changes transfer only through collapse
(exclusion). When a control also moves source test accuracy, that is doubtful, and the
section says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

WEAK_F = 10.0  # Staiger & Stock's rule of thumb for the first stage
ALPHA = 0.05


@dataclass(frozen=True)
class IVResult:
    """The intervention's estimates for S studies at once (arrays of shape (S,)).

    Attributes:
        first_f: first-stage F of x on the levels; reduced_f, reduced_p: F and p of y on them.
        beta: the 2SLS slope of y on x through the level means.
        ar_low, ar_high: the Anderson-Rubin 95% set: [low, high] when `ar_kind` is "interval",
            (-inf, low] u [high, inf) when "rays", everything when "all", nothing when "empty".
        ar_kind: "interval", "rays", "all" or "empty" (object array).
        n, k: trials and levels.
    """

    first_f: np.ndarray
    reduced_f: np.ndarray
    reduced_p: np.ndarray
    beta: np.ndarray
    ar_low: np.ndarray
    ar_high: np.ndarray
    ar_kind: np.ndarray
    n: int
    k: int


def _sums(a: np.ndarray, b: np.ndarray, onehot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Between- and within-level cross products of a and b (S, n): B_ab, W_ab, each (S,)."""
    counts = onehot.sum(0)  # (k,)
    ma = a @ onehot / counts  # (S, k)
    mb = b @ onehot / counts
    ga, gb = a.mean(1, keepdims=True), b.mean(1, keepdims=True)
    between = ((ma - ga) * (mb - gb) * counts).sum(1)
    within = ((a - ma @ onehot.T) * (b - mb @ onehot.T)).sum(1)
    return between, within


def _levels(groups: np.ndarray) -> np.ndarray:
    """One-hot (n, k) of the group labels (k distinct values, in sorted order)."""
    _, inverse = np.unique(groups, return_inverse=True)
    return np.eye(int(inverse.max()) + 1)[inverse]


def iv_anova(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> IVResult:
    """First stage, reduced form, 2SLS and the Anderson-Rubin set (module docstring).

    Args:
        x: collapse, (n,) or (S, n) for S simulated studies sharing one design.
        y: transfer, the same shape.
        groups: (n,) level labels.

    Raises:
        ValueError: fewer than 2 levels or no within-level replication (n - k < 1).
    """
    x2, y2 = np.atleast_2d(np.asarray(x, float)), np.atleast_2d(np.asarray(y, float))
    onehot = _levels(np.asarray(groups))
    n, k = onehot.shape
    if k < 2 or n - k < 1:
        raise ValueError(f"an intervention needs >= 2 levels and replicates (n={n}, k={k})")
    bxx, wxx = _sums(x2, x2, onehot)
    byy, wyy = _sums(y2, y2, onehot)
    bxy, wxy = _sums(x2, y2, onehot)
    df1, df2 = k - 1, n - k
    with np.errstate(divide="ignore", invalid="ignore"):
        first_f = (bxx / df1) / (wxx / df2)
        reduced_f = (byy / df1) / (wyy / df2)
        beta = bxy / bxx
    reduced_p = stats.f.sf(reduced_f, df1, df2)
    # AR: b is in the set iff B(b) - q W(b) <= 0, a quadratic a b^2 - 2 h b + c.
    q = stats.f.ppf(1 - ALPHA, df1, df2) * df1 / df2
    a, h, c = bxx - q * wxx, bxy - q * wxy, byy - q * wyy
    disc = h * h - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r1, r2 = (h - root) / a, (h + root) / a
    kind = np.where(a > 0, np.where(disc >= 0, "interval", "empty"),
                    np.where(disc > 0, "rays", "all")).astype(object)
    low, high = np.minimum(r1, r2), np.maximum(r1, r2)
    return IVResult(first_f, reduced_f, reduced_p, beta, low, high, kind, n, k)


def level_effects(values: np.ndarray, groups: np.ndarray, baseline: object
                  ) -> list[tuple[object, float, float, float, float]]:
    """Each level's mean difference from `baseline` with its 95% t interval (pooled MSW, df n-k).

    Returns:
        [(level, difference, low, high, p), ...] for every level but the baseline, in sorted
        order of the level labels.
    """
    v, g = np.asarray(values, float), np.asarray(groups)
    labels = sorted(set(g.tolist()), key=str)
    means = {lv: v[g == lv].mean() for lv in labels}
    counts = {lv: int((g == lv).sum()) for lv in labels}
    df = len(v) - len(labels)
    msw = sum(((v[g == lv] - means[lv]) ** 2).sum() for lv in labels) / df
    t = stats.t.ppf(1 - ALPHA / 2, df)
    out = []
    for lv in labels:
        if lv == baseline:
            continue
        d = means[lv] - means[baseline]
        se = math.sqrt(msw * (1 / counts[lv] + 1 / counts[baseline]))
        p = float(2 * stats.t.sf(abs(d) / se, df)) if se > 0 else float("nan")
        out.append((lv, float(d), d - t * se, d + t * se, p))
    return out


def _num(v: float) -> str:
    return f"{v:+.3g}" if math.isfinite(v) else ("+inf" if v > 0 else "-inf")


def ar_text(low: float, high: float, kind: str) -> str:
    """The Anderson-Rubin set in words: '[-0.12, +0.03]', 'outside (-0.5, +0.2)', ..."""
    if kind == "interval":
        return f"[{_num(low)}, {_num(high)}]"
    if kind == "rays":
        return f"everything outside ({_num(low)}, {_num(high)})"
    if kind == "all":
        return "every value (the data cannot bound it)"
    return "no value (the one-way model does not fit these trials)"


def iv_sentences(first_f: float, reduced_p: float, beta: float, low: float, high: float,
                 kind: str, *, x_name: str, y_name: str, n: int, k: int) -> list[str]:
    """The section's verdict: what the intervention says about collapse -> transfer.

    Exactly one of three claims: too weak (first-stage F < 10: nothing is said about the
    effect), an effect (the Anderson-Rubin set excludes 0, i.e. the reduced form rejects at
    5%), or no evidence of one; then the assumption, always.
    """
    per = f"{y_name} per unit of {x_name}"
    if not math.isfinite(first_f) or first_f < WEAK_F:
        lines = [f"The manipulation was too weak to say anything: the controls moved {x_name} "
                 f"with a first-stage F of {first_f:.3g} (< {WEAK_F:g}) over {k} levels and "
                 f"{n} trials, so no effect of collapse on transfer is estimated."]
    elif reduced_p < ALPHA and ((kind == "interval" and not low <= 0 <= high)
                                or (kind == "rays" and low < 0 < high)):
        direction = "raised" if beta > 0 else "lowered"
        lines = [f"Moving collapse moved transfer: raising {x_name} {direction} {y_name}, "
                 f"{beta:+.3g} {per} (2SLS, controls as instruments; 95% Anderson-Rubin set "
                 f"{ar_text(low, high, kind)}; first-stage F = {first_f:.3g}, reduced-form "
                 f"p = {reduced_p:.2g}, {n} trials in {k} levels)."]
    elif kind == "empty":
        lines = [f"The levels moved {y_name}, but not in proportion to how they moved {x_name}: "
                 "no single effect of collapse fits these trials (the Anderson-Rubin set is "
                 f"empty; reduced-form p = {reduced_p:.2g}, first-stage F = {first_f:.3g}), so "
                 "the controls change transfer through more than collapse and no effect of "
                 "collapse is estimated."]
    else:
        lines = [f"No evidence that moving collapse moved transfer: {beta:+.3g} {per} (2SLS; "
                 f"95% Anderson-Rubin set {ar_text(low, high, kind)}; first-stage "
                 f"F = {first_f:.3g}, reduced-form p = {reduced_p:.2g}, {n} trials in {k} "
                 "levels)."]
    lines.append("This reading assumes the controls change transfer only through collapse "
                 "(the exclusion restriction of an instrumental variable); a control that also "
                 "changes what the features encode in other ways breaks it.")
    return lines


def claims_effect(lines: list[str]) -> bool:
    """Whether a section's sentences claim an effect of collapse on transfer (for the tests)."""
    return any(line.startswith("Moving collapse moved transfer") for line in lines)
