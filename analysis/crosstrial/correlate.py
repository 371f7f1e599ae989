"""Does collapse predict transfer? Rank correlations across trials and (trial, epoch) points.

Every statistic is computed by one weighted code path: a bootstrap replicate that draws trial
`i` c_i times is the original points weighted by c_i, so the point estimate is the replicate with
all weights 1. Resampling whole trials (a cluster bootstrap) keeps the epochs of one trial
together: they are not independent, and resampling them singly would make intervals too narrow.
scipy.stats.bootstrap resamples single observations only and calls the statistic once per
replicate, hence the hand-written, vectorised weighted ranks / Pearson / Kendall below.

Methods (registry `METHODS`): spearman, kendall (tau-b), pearson_log (Pearson on log10 of the
collapse metric, whose scale is multiplicative), partial_spearman (Spearman of x and y after
removing the linear effect of the ranks of a control, source test accuracy by default).

Intervals and tests. Over independent trials (one point per trial), spearman and partial_spearman
take their interval AND their p-value from one method, the Fisher-z interval and Wald test with
the Bonett–Wright variance (analysis.crosstrial.fisherz, where the choice is measured): the two
never contradict each other and the estimate always lies inside its interval. The other methods,
and every method over pooled (trial, epoch) points, use the percentile cluster bootstrap.

When the partial correlation cannot be estimated it says so instead of printing an interval
(`reason`): when the control ranks either variable with |Spearman| >= CONTROL_RHO_MAX the
residual ranks are a handful of swapped neighbours and these trials cannot separate a direct link
from "better source models do both"; when more than MAX_DEGENERATE of the bootstrap resamples
have no partial correlation (a resample that drops the out-of-order pairs makes r_yz = +-1) the
resamples that remain are biased. Any bootstrap interval that does not contain its own estimate
is withheld the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis import contract as names
from analysis.crosstrial import fisherz, rank_tau, store
from analysis.crosstrial.resample import (  # noqa: F401  (re-exported)
    BOOT_CELLS,
    MIN_REPLICATES,
    cluster_weights,
    replicates,
)
from analysis.crosstrial.runs import StudyRuns

CONTROL = names.SOURCE_TEST_ACC
CDNV_SPLITS = names.SPLITS
MIN_TRIALS = 3
# Below this many trials a bootstrap has too few distinct resamples (3 trials: 10) for its
# percentiles to mean anything: estimates and p-values only, no interval.
MIN_BOOT_TRIALS = 5
# Kendall's bootstrap costs O(points log points) per replicate (by sorting); above this many
# pooled points it is still left to the (trial-level) interval, the one the verdict uses.
MAX_KENDALL_POINTS = 800
KENDALL_BLOCK_CELLS = 2_000_000  # (replicate, point) cells per rank_tau call: bounded memory
# The partial correlation is withheld above this |Spearman| between the control and either variable,
# or when more than this share of bootstrap resamples has no partial correlation (module docstring).
CONTROL_RHO_MAX = 0.95
MAX_DEGENERATE = 0.05
# Methods whose trial-level interval and test are Fisher-z (Bonett–Wright): name -> controls k.
FISHER = {"spearman": 0, "partial_spearman": 1}


class Sample:
    """x, y (and control z) with a (B, n) weight matrix; ranks are computed once and shared."""

    def __init__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | None, w: np.ndarray):
        self.x, self.y, self.z, self.w = x, y, z, w
        self._ranks: dict[str, np.ndarray] = {}

    def ranks(self, which: str) -> np.ndarray:
        """Weighted ranks of x, y or z, computed once per sample and cached (every rank method
        reuses them)."""
        if which not in self._ranks:
            self._ranks[which] = weighted_ranks(getattr(self, which), self.w)
        return self._ranks[which]


@dataclass(frozen=True)
class Method:
    """A correlation: `stat(sample)` -> one value per weight row; `pvalue(x, y, z, r)`."""

    stat: Callable[[Sample], np.ndarray]
    pvalue: Callable[[np.ndarray, np.ndarray, np.ndarray | None, float], float]
    needs_control: bool = False


METHODS: dict[str, Method] = {}


def register_method(name: str, *, pvalue: Callable[..., float],
                    needs_control: bool = False) -> Callable[..., Callable[..., np.ndarray]]:
    """Decorator: add a correlation method to METHODS with its p-value function and whether it needs
    the control."""
    def deco(fn: Callable[[Sample], np.ndarray]) -> Callable[[Sample], np.ndarray]:
        METHODS[name] = Method(fn, pvalue, needs_control)
        return fn
    return deco


def _tie_groups(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(v, kind="stable")
    vs = v[order]
    new = np.r_[True, vs[1:] != vs[:-1]]
    return order, np.cumsum(new) - 1, np.flatnonzero(new)


def weighted_ranks(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average ranks of the multiset holding point i w[b, i] times, per row b of `w`."""
    order, gid, starts = _tie_groups(v)
    group_w = np.add.reduceat(w[:, order], starts, axis=1)
    rank_g = np.cumsum(group_w, axis=1) - group_w + (group_w + 1.0) / 2.0
    out = np.empty_like(w)
    out[:, order] = rank_g[:, gid]
    return out


def weighted_pearson(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson r of (a, b) weighted by each row of w; a and b are (n,) or (B, n). NaN if flat."""
    tot = w.sum(axis=1, keepdims=True)
    da = a - (w * a).sum(axis=1, keepdims=True) / tot
    db = b - (w * b).sum(axis=1, keepdims=True) / tot
    cov, va, vb = ((w * da * db).sum(1), (w * da * da).sum(1), (w * db * db).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(va * vb)
    flat = (va <= 1e-12 * np.maximum(1.0, (w * a * a).sum(1))) | (vb <= 1e-12 * np.maximum(
        1.0, (w * b * b).sum(1)))
    return np.where(flat, np.nan, np.clip(r, -1.0, 1.0))


def _t_pvalue(r: float, dof: int) -> float:
    if not np.isfinite(r) or dof < 1:
        return float("nan")
    t = r * np.sqrt(dof / max(1e-300, 1.0 - r * r))
    return float(2 * stats.t.sf(abs(t), dof))


def _spearman_p(x: np.ndarray, y: np.ndarray, z: np.ndarray | None, r: float) -> float:
    """scipy's t approximation from 10 trials up; below, a permutation test (exact up to 7
    trials): at 4 trials a perfect ranking has p = 2/24, where the t approximation says 0."""
    if len(x) >= 10:
        return float(stats.spearmanr(x, y).pvalue)
    b = stats.rankdata(x) - (len(x) + 1) / 2

    def stat(a: np.ndarray, axis: int = -1) -> np.ndarray:
        a = a - a.mean(axis=axis, keepdims=True)
        return (a * b).sum(axis) / np.sqrt((a * a).sum(axis) * (b * b).sum())

    return float(stats.permutation_test((stats.rankdata(y),), stat, vectorized=True,
                                        permutation_type="pairings", n_resamples=9999,
                                        rng=0).pvalue)


@register_method("spearman", pvalue=_spearman_p)
def spearman(s: Sample) -> np.ndarray:
    """Spearman's rho: the weighted Pearson correlation of weighted ranks."""
    return weighted_pearson(s.ranks("x"), s.ranks("y"), s.w)


@register_method("kendall", pvalue=lambda x, y, z, r: float(stats.kendalltau(x, y).pvalue))
def kendall(smp: Sample) -> np.ndarray:
    """Kendall tau-b of each weighted multiset (row of `smp.w`: integer draw counts), as
    scipy.stats.kendalltau computes it on the expanded draws (Kendall 1945):

        tau_b = (n_c - n_d) / sqrt((n0 - t_x) (n0 - t_y)),

    by sorting (analysis.crosstrial.rank_tau, a merge-sort tree over the points): O(B n log n)
    time and O(B n) memory, no n x n sign matrix. Rows are taken in blocks of about 2 million
    (replicate, point) cells."""
    if not len(smp.w):
        return np.zeros(0)
    blocks = max(1, int(np.ceil(smp.w.size / KENDALL_BLOCK_CELLS)))
    return np.concatenate([rank_tau.taus(smp.x, smp.y, blk)[1]
                           for blk in np.array_split(smp.w, blocks)])


@register_method("pearson_log",
                 pvalue=lambda x, y, z, r: float(stats.pearsonr(np.log10(x), y).pvalue))
def pearson_log(s: Sample) -> np.ndarray:
    """Pearson's r of log10(collapse) with transfer: collapse metrics vary on a multiplicative
    scale."""
    return weighted_pearson(np.log10(s.x), s.y, s.w)


@register_method("partial_spearman", needs_control=True,
                 pvalue=lambda x, y, z, r: _t_pvalue(r, len(x) - 3))  # below MIN_BOOT_TRIALS
def partial_spearman(s: Sample) -> np.ndarray:
    """(r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2)) on ranks: the rank association of x and
    y that is left once each is linearly predicted from the control's ranks.

    When x or y is a near-exact monotone function of the control, the rank residuals are a few
    swapped neighbours shared by x and y and resamples degenerate: `correlate` then withholds
    the interval (CONTROL_RHO_MAX, MAX_DEGENERATE; tests/analysis/crosstrial/test_calibration.py
    measures coverage and false claims).
    """
    rx, ry, rz = (s.ranks(v) for v in "xyz")
    rxy, rxz, ryz = (weighted_pearson(a, b, s.w) for a, b in ((rx, ry), (rx, rz), (ry, rz)))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (rxy - rxz * ryz) / np.sqrt((1 - rxz ** 2) * (1 - ryz ** 2))
    return np.where(np.isfinite(r), np.clip(r, -1.0, 1.0), np.nan)


def format_ci(est: float, lo: float, hi: float) -> str:
    """'−0.81 [−0.92, −0.62]' with true minus signs; 'n/a' for NaN."""
    if not np.isfinite(est):
        return "n/a"
    s = f"{est:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else "")
    return s.replace("-", "−")


def cell(e: object) -> str:
    """An Estimate (or a table row) as a table cell: format_ci, or 'withheld' when the partial
    correlation cannot separate the explanations (the reason goes in the row's note)."""
    est, lo, hi = (float(getattr(e, k)) for k in ("estimate", "ci_low", "ci_high"))
    if not np.isfinite(lo) and "cannot separate" in str(getattr(e, "reason", "")):
        return "withheld (see note)"
    return format_ci(est, lo, hi)


@dataclass(frozen=True)
class Estimate:
    """One correlation with its 95% interval and p-value (`p_method` names how both were made).

    `reason` is non-empty when there is no interval (or no estimate): it says why, with numbers.
    """

    method: str
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    p_method: str
    n: int
    n_trials: int
    reason: str = ""


def correlate(x: np.ndarray, y: np.ndarray, *, groups: np.ndarray | None = None,
              control: np.ndarray | None = None, methods: tuple[str, ...] | None = None,
              n_boot: int = 2000, seed: int = 0) -> dict[str, Estimate]:
    """Correlate collapse `x` with transfer `y`; `groups` = the trial of each point.

    Points with a non-finite x or y (or control, for partial methods) are left out. With fewer
    than MIN_TRIALS trials (one more for partial) the estimate is NaN and `reason` says why.
    Every method sees the same bootstrap replicates (same seed), so their intervals compare.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    groups = np.arange(len(x)) if groups is None else np.asarray(groups)
    z = None if control is None else np.asarray(control, float)
    base = np.isfinite(x) & np.isfinite(y)
    masks = {False: base, True: base & (np.isfinite(z) if z is not None else False)}
    samples: dict[bool, tuple[Sample, Sample]] = {}
    out: dict[str, Estimate] = {}
    for name in methods or tuple(METHODS):
        m = METHODS[name]
        keep = masks[m.needs_control]
        xs, ys, zs, gs = x[keep], y[keep], None if z is None else z[keep], groups[keep]
        n, n_trials = len(xs), len(np.unique(gs))
        reason = _why_not(name, m, xs, ys, zs, n_trials)
        if reason:
            nan = float("nan")
            out[name] = Estimate(name, nan, nan, nan, nan, "", n, n_trials, reason)
            continue
        if m.needs_control not in samples:
            samples[m.needs_control] = (
                Sample(xs, ys, zs, np.ones((1, n))),
                Sample(xs, ys, zs, cluster_weights(gs, n_boot, np.random.default_rng(seed))))
        point, boot = samples[m.needs_control]
        out[name] = _estimate(name, m, point, boot, n_trials)
    return out


def _why_not(name: str, m: Method, x: np.ndarray, y: np.ndarray, z: np.ndarray | None,
             n_trials: int) -> str:
    need = MIN_TRIALS + (1 if m.needs_control else 0)
    if m.needs_control and z is None:
        return f"no {CONTROL} logged to control for"
    if n_trials < need:
        return f"{n_trials} trial(s) with both metrics; {name} needs at least {need}"
    for label, v in (("first metric", x), ("second metric", y),
                     ("control", z if m.needs_control else None)):
        if v is not None and np.ptp(v) == 0:
            return f"the {label} is constant over the {n_trials} trials"
    if name == "pearson_log" and (x <= 0).any():
        return "log10 needs positive values of the first metric"
    return ""


def _estimate(name: str, m: Method, point: Sample, boot: Sample, n_trials: int) -> Estimate:
    n = len(point.x)
    est = float(m.stat(point)[0])
    pooled = n_trials < n
    nan = float("nan")
    if name == "kendall" and pooled and n > MAX_KENDALL_POINTS:
        return Estimate(name, est, nan, nan, nan, "", n, n_trials,
                        f"no bootstrap above {MAX_KENDALL_POINTS} pooled points")
    fisher = not pooled and name in FISHER
    # the Fisher-z spearman needs no resamples; the partial needs them to count degenerate ones
    all_reps = m.stat(boot) if not fisher or m.needs_control else np.zeros(0)
    reps = all_reps[np.isfinite(all_reps)]
    lo, hi = np.percentile(reps, [2.5, 97.5]) if len(reps) else (np.nan, np.nan)
    if n_trials < MIN_BOOT_TRIALS:
        p = np.nan if pooled else m.pvalue(point.x, point.y, point.z, est)
        p_method = "" if pooled else ("t (n-3)" if m.needs_control else "scipy")
        return Estimate(name, est, nan, nan, float(p), p_method, n, n_trials,
                        f"{n_trials} trials are too few for a bootstrap interval")
    reason = _cannot_separate(point, all_reps) if m.needs_control else ""
    if reason:
        return Estimate(name, est, nan, nan, nan, "", n, n_trials, reason)
    if fisher:
        flo, fhi, fp = fisherz.interval_and_p(est, n, FISHER[name])
        return Estimate(name, est, float(flo), float(fhi), float(fp),
                        "Fisher z (Bonett-Wright)", n, n_trials)
    if not lo <= est <= hi:
        return Estimate(name, est, nan, nan, nan, "", n, n_trials,
                        f"the bootstrap interval [{lo:.2f}, {hi:.2f}] does not contain the "
                        f"estimate {est:.2f}: its resamples are biased, so no interval is given")
    if pooled:  # points within a trial are dependent: no textbook test applies
        p = min(1.0, 2 * (min((reps <= 0).sum(), (reps >= 0).sum()) + 1) / (len(reps) + 1))
        p_method = "cluster bootstrap"
    else:
        p = m.pvalue(point.x, point.y, point.z, est)
        p_method = "scipy"
    return Estimate(name, est, float(lo), float(hi), float(p), p_method, n, n_trials)


def _cannot_separate(point: Sample, reps: np.ndarray) -> str:
    """Why the partial correlation given the control cannot be estimated ('' when it can): the
    control ranks either variable almost perfectly, or too many resamples are degenerate."""
    rz = point.ranks("z")
    rho = {label: float(weighted_pearson(point.ranks(v), rz, point.w)[0])
           for v, label in (("y", "the transfer metric"), ("x", "the predictor"))}
    label, worst = max(rho.items(), key=lambda kv: abs(kv[1]))
    head = ("these trials cannot separate the two explanations (a direct link, or better source "
            "models doing both): source test accuracy ranks")
    if abs(worst) >= CONTROL_RHO_MAX:
        return (f"{head} {label} with Spearman {worst:.3f} (at or above {CONTROL_RHO_MAX}), so "
                "what is left at equal source accuracy is a few swapped neighbours")
    bad = float(np.mean(~np.isfinite(reps))) if len(reps) else 0.0
    if bad > MAX_DEGENERATE:
        return (f"{head} {label} with Spearman {worst:.3f} and {bad:.0%} of bootstrap resamples "
                f"(more than {MAX_DEGENERATE:.0%}) have no partial correlation at all (the control "
                "ranks a variable perfectly there), so the rest are biased")
    return ""


def collapse_columns(frame: pd.DataFrame) -> list[str]:
    """CDNV on the three splits, then NC1 on whatever splits were logged."""
    cols = [names.collapse_key("cdnv", s) for s in CDNV_SPLITS
            if names.collapse_key("cdnv", s) in frame]
    return cols + sorted(c for c in frame.columns
                         if names.is_collapse(c) and names.family_of(c) == "nc1")


def transfer_columns(frame: pd.DataFrame) -> list[str]:
    """Few-shot accuracies, ncc first."""
    cols = [c for c in frame.columns if names.is_fewshot_acc(c)]
    return sorted(cols, key=lambda c: (c.split("/")[2] != "ncc", c))


def primary_transfer(study: StudyRuns) -> str | None:
    """The study's search metric if it is a few-shot accuracy, else 5w5s NCC, else the first."""
    cols = transfer_columns(study.final)
    for c in (study.tags.get(store.TAG_METRIC, ""), names.DEFAULT_SEARCH_METRIC):
        if c in cols:
            return c
    return cols[0] if cols else None


def correlation_table(study: StudyRuns, *, level: str = "trial", n_boot: int = 2000,
                      seed: int = 0, methods: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Every (collapse metric, transfer metric, method) over the usable trials.

    Args:
        level: "trial" (one point per trial, its final epoch) or "epoch" (every evaluated
            (trial, epoch) point, resampled by trial).
    """
    if level not in ("trial", "epoch"):
        raise ValueError(f"level: {level!r} is not one of 'trial', 'epoch'")
    frame = study.usable if level == "trial" else study.usable_history
    n_boot = replicates(n_boot, len(frame))
    rows = []
    for xc in collapse_columns(frame):
        for yc in transfer_columns(frame):
            res = correlate(frame[xc].to_numpy(float), frame[yc].to_numpy(float),
                            groups=frame["trial_index"].to_numpy(),
                            control=frame[CONTROL].to_numpy(float) if CONTROL in frame else None,
                            methods=methods, n_boot=n_boot, seed=seed)
            rows += [{"level": level, "collapse": xc, "transfer": yc, **vars(e)}
                     for e in res.values()]
    return pd.DataFrame(rows, columns=["level", "collapse", "transfer", *Estimate.__annotations__])
