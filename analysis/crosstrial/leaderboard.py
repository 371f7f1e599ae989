"""Which statistic ranks the trials' few-shot transfer best? A predictor leaderboard.

Every candidate predictor logged at the trials' final epoch (CDNV and NC1 per split, the per-layer
collapse statistics when logged, every transferability estimator, the pooled NCTI, and source
test accuracy as the baseline every predictor has to beat) against each few-shot accuracy,
across usable trials: Spearman, Kendall tau-b, weighted Kendall tau_w (scipy.stats.weightedtau,
the transferability literature's measure: swaps among the best trials weigh more), each with a
95% bootstrap interval over trials, and the partial Spearman given source accuracy.

Orientation: each candidate is multiplied by +1 (higher = better transfer expected) or -1 (lower
= better: CDNV, NC1, NCTI's within-class spread) before ranking, so a positive correlation always
means "ranks the trials the right way round"; the table states the orientation.

Rank correlations and their intervals reuse `analysis.crosstrial.correlate` (same weighted
bootstrap replicates for every method); tau_w is evaluated on the same replicates, expanded to
index draws, because scipy's weightedtau takes no sample weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis import contract as names
from analysis.crosstrial import correlate as corr
from analysis.crosstrial.runs import describe

BASELINE = names.SOURCE_TEST_ACC
POOLED_NCTI = "ncti_pooled"  # formed here across trials, not a logged metric
METHODS = ("spearman", "kendall", "partial_spearman")
COLUMNS = ["candidate", "kind", "orientation", "transfer", "method", "estimate", "ci_low",
           "ci_high", "n_trials", "reason"]




def label(name: str) -> str:
    """A candidate in words: 'transfer/knn/target' -> 'k-NN leave-one-out accuracy (target)'."""
    if name == POOLED_NCTI:
        return "NCTI (pooled over trials)"
    return describe(name)


def orientation(name: str) -> int:
    """+1 if higher values should mean better transfer, -1 if lower (CDNV, NC1, ncti_vc): the
    metric's descriptor (analysis.descriptors) says which; the pooled NCTI is higher-better."""
    return -1 if names.direction(name) < 0 else 1


def _kind(name: str) -> str:
    if name == BASELINE:
        return "baseline"
    if name == POOLED_NCTI or name.startswith(names.TRANSFER_PREFIX + "/"):
        return "estimator"
    return "layer" if name.startswith(names.LAYER_PREFIX + "/") else "collapse"


def pooled_ncti(frame: pd.DataFrame) -> pd.Series | None:
    """NCTI = minmax(S_seli) + minmax(S_ncc) - minmax(S_vc) over the trials (Wang et al., ICCV
    2023, as the authors' code pools a model zoo); None unless all three parts were logged."""
    keys = [names.transfer_key(p) for p in ("ncti_seli", "ncti_ncc", "ncti_vc")]
    if not all(k in frame for k in keys):
        return None

    def minmax(v: pd.Series) -> pd.Series:
        span = v.max() - v.min()
        return (v - v.min()) / span if span > 0 else v * 0.0

    seli, ncc, vc = (minmax(frame[k].astype(float)) for k in keys)
    return seli + ncc - vc


def candidates(frame: pd.DataFrame) -> list[str]:
    """Candidate columns present in `frame`, baseline first (after `with_pooled_ncti`)."""
    cols = [c for c in frame.columns if isinstance(c, str)]
    collapse = [c for c in cols if names.is_collapse(c) and names.family_of(c) in ("cdnv", "nc1")]
    layers = [c for c in cols if c.startswith(names.LAYER_PREFIX + "/") and len(c.split("/")) == 4
              and c.split("/")[2] in names.LAYER_FAMILIES]
    transfer = [names.transfer_key(e) for e in names.ESTIMATORS if names.transfer_key(e) in frame]
    pooled = [POOLED_NCTI] if POOLED_NCTI in frame else []
    base = [BASELINE] if BASELINE in frame else []
    return base + sorted(collapse) + transfer + pooled + sorted(layers)


def with_pooled_ncti(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with the pooled NCTI column added where its parts were logged."""
    pooled = pooled_ncti(frame)
    if pooled is None:
        return frame
    # The final-epoch frame holds hundreds of metric columns added one by one; copying it
    # first makes the new column one block (pandas warns about the fragmented original).
    return frame.copy().assign(**{POOLED_NCTI: pooled})


def _tau_ordered(key: np.ndarray, other: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One half of weightedtau: ranks by decreasing lexicographic (key, other), per row."""
    perm = np.lexsort((other, key), axis=-1)[:, ::-1]
    w = 1.0 / (np.argsort(perm, axis=-1) + 1.0)  # hyperbolic weigher of the rank (0 = top)
    iu = np.triu_indices(x.shape[1], 1)
    weight = (w[:, :, None] + w[:, None, :])[:, iu[0], iu[1]]  # additive: w(r_i) + w(r_j)
    sx = np.sign(x[:, :, None] - x[:, None, :])[:, iu[0], iu[1]]
    sy = np.sign(y[:, :, None] - y[:, None, :])[:, iu[0], iu[1]]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weight * sx * sy).sum(1) / np.sqrt((weight * sx * sx).sum(1)
                                                   * (weight * sy * sy).sum(1))


def weighted_tau(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """scipy.stats.weightedtau(x[b], y[b]) for every row b of (B, n) arrays, vectorised.

    Vigna's additive hyperbolic tau_w (scipy's defaults): a pair (i, j) weighs
    1/(r_i + 1) + 1/(r_j + 1) for ranks r by decreasing value; tau_w = sum W s_x s_y /
    sqrt(sum W s_x^2 sum W s_y^2) with s = sign of the differences; ranked once by (x, y) and
    once by (y, x), averaged. Written out because scipy's takes one sample per call (about 1 ms
    each): a leaderboard's bootstrap needs tens of thousands. Tested against scipy.
    """
    x, y = np.atleast_2d(x), np.atleast_2d(y)
    return (_tau_ordered(x, y, x, y) + _tau_ordered(y, x, x, y)) / 2


@dataclass(frozen=True)
class TauW:
    """tau_w with its percentile interval and the bootstrap replicates (for paired contrasts)."""

    estimate: float
    ci_low: float
    ci_high: float
    replicates: np.ndarray


def tau_w(x: np.ndarray, y: np.ndarray, *, n_boot: int, seed: int) -> TauW:
    """tau_w of (x, y) over trials with a 95% percentile interval on the same replicates as
    `correlate.correlate` uses (cluster_weights with the same seed)."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    nan = float("nan")
    if len(x) < corr.MIN_TRIALS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return TauW(nan, nan, nan, np.full(n_boot, nan))
    est = float(stats.weightedtau(x, y).statistic)
    counts = corr.cluster_weights(np.arange(len(x)), n_boot, np.random.default_rng(seed))
    idx = np.stack([np.repeat(np.arange(len(x)), c) for c in counts.astype(int)])
    reps = weighted_tau(x[idx], y[idx])
    lo, hi = (np.nanpercentile(reps, [2.5, 97.5]) if len(x) >= corr.MIN_BOOT_TRIALS
              else (nan, nan))
    return TauW(est, float(lo), float(hi), reps)


def leaderboard_table(frame: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0,
                      tau_boot: int | None = None) -> tuple[pd.DataFrame, dict[tuple[str, str],
                                                                                   TauW]]:
    """Every (candidate, few-shot accuracy, method) over the trials of `frame` (one row per
    trial, its final epoch), oriented; and the tau_w replicates per (candidate, transfer).

    Args:
        frame: usable trials at their final epoch (StudyRuns.usable).
        n_boot: bootstrap replicates for Spearman, Kendall and partial Spearman.
        tau_boot: replicates for tau_w (default n_boot // 4, at least 200: it is evaluated
            replicate by replicate).
    """
    frame = with_pooled_ncti(frame)
    tau_boot = tau_boot or max(200, n_boot // 4)
    control = frame[BASELINE].to_numpy(float) if BASELINE in frame else None
    groups = frame["trial_index"].to_numpy() if "trial_index" in frame else None
    rows, taus = [], {}
    for cand in candidates(frame):
        sign = orientation(cand)
        x = sign * frame[cand].to_numpy(float)
        for target in corr.transfer_columns(frame):
            y = frame[target].to_numpy(float)
            res = corr.correlate(x, y, groups=groups, control=None if cand == BASELINE
                                 else control, methods=METHODS, n_boot=n_boot, seed=seed)
            head = {"candidate": cand, "kind": _kind(cand),
                    "orientation": "higher is better" if sign > 0 else "lower is better",
                    "transfer": target}
            rows += [{**head, "method": e.method, "estimate": e.estimate, "ci_low": e.ci_low,
                      "ci_high": e.ci_high, "n_trials": e.n_trials,
                      "reason": "the baseline is the control" if cand == BASELINE
                      and e.method == "partial_spearman" else e.reason}
                     for e in res.values()]
            tw = taus[cand, target] = tau_w(x, y, n_boot=tau_boot, seed=seed)
            rows.append({**head, "method": "weighted_tau", "estimate": tw.estimate,
                         "ci_low": tw.ci_low, "ci_high": tw.ci_high,
                         "n_trials": int((np.isfinite(x) & np.isfinite(y)).sum()), "reason": ""})
    return pd.DataFrame(rows, columns=COLUMNS), taus


@dataclass(frozen=True)
class Verdict:
    """The leaderboard's answer for one few-shot accuracy."""

    transfer: str
    winner: str
    winner_tau_w: TauW
    baseline_tau_w: TauW | None
    diff_ci: tuple[float, float]  # paired bootstrap interval of tau_w(winner) - tau_w(baseline)
    n_candidates: int = 0

    @property
    def separates(self) -> bool:
        """Whether the winner's tau_w is clearly above the baseline's (paired interval > 0)."""
        return bool(np.isfinite(self.diff_ci[0]) and self.diff_ci[0] > 0)


def verdict(taus: dict[tuple[str, str], TauW], transfer: str) -> Verdict | None:
    """The candidate with the highest tau_w against `transfer`, and how it compares with the
    baseline (source test accuracy) on the same bootstrap replicates."""
    mine = {c: t for (c, y), t in taus.items() if y == transfer and np.isfinite(t.estimate)}
    if not mine:
        return None
    winner = max(mine, key=lambda c: mine[c].estimate)
    base = mine.get(BASELINE)
    diff: tuple[float, float] = (float("nan"), float("nan"))
    if base is not None and winner != BASELINE and np.isfinite(mine[winner].ci_low):
        d = mine[winner].replicates - base.replicates
        d = d[np.isfinite(d)]
        if len(d):
            lo, hi = np.percentile(d, [2.5, 97.5])
            diff = (float(lo), float(hi))
    return Verdict(transfer, winner, mine[winner], base, diff, len(mine))


def verdict_sentence(v: Verdict | None) -> str:
    """The plain-words verdict the report opens its leaderboard with."""
    if v is None:
        return "No predictor could be ranked: too few trials with both it and a few-shot accuracy."
    w = corr.format_ci(v.winner_tau_w.estimate, v.winner_tau_w.ci_low, v.winner_tau_w.ci_high)
    line = (f"Of {v.n_candidates} candidates, {label(v.winner)} ranks the trials by "
            f"{describe(v.transfer)} best: weighted Kendall τ_w {w} (picked as the best of "
            "many, so its own interval is optimistic).")
    if v.winner == BASELINE:
        return line + " No statistic of the features beats source test accuracy alone."
    if v.baseline_tau_w is None:
        return line + " Source test accuracy was not logged, so there is no baseline to beat."
    b = v.baseline_tau_w
    base = corr.format_ci(b.estimate, b.ci_low, b.ci_high)
    if not np.isfinite(v.diff_ci[0]):
        return line + f" Source test accuracy: τ_w {base}; too few trials to tell them apart."
    gap = corr.format_ci(v.winner_tau_w.estimate - b.estimate, *v.diff_ci)
    if v.separates:
        return line + (f" That is clearly better than source test accuracy (τ_w {base}): the "
                       f"paired difference {gap} excludes 0.")
    return line + (f" It does not separate from source test accuracy (τ_w {base}): the paired "
                   f"difference {gap} includes 0.")


def slug(name: str) -> str:
    """'transfer/knn/target' -> 'transfer_knn_target': one metric-name part."""
    return name.replace("/", "_")


def parent_metrics(v: Verdict | None, taus: dict[tuple[str, str], TauW]) -> dict[str, float]:
    """Parent-run metrics: tau_w of every candidate against the verdict's few-shot accuracy,
    the winner's tau_w under its own name and as `winner_tau_w`, and whether it separates
    from source accuracy (1/0), so MLflow can line studies up."""
    if v is None:
        return {}
    out = {names.analysis_key("leaderboard", "tau_w", slug(c)): t.estimate
           for (c, y), t in taus.items() if y == v.transfer and np.isfinite(t.estimate)}
    out[names.analysis_key("leaderboard", "winner", slug(v.winner))] = v.winner_tau_w.estimate
    out[names.analysis_key("leaderboard", "winner_tau_w")] = v.winner_tau_w.estimate
    out[names.analysis_key("leaderboard", "winner_separates_from_source")] = float(v.separates)
    return out


def leaderboard_view(table: pd.DataFrame, transfer: str) -> pd.DataFrame:
    """One row per candidate against `transfer`, best tau_w first: each method as
    'estimate [95% CI]', and the orientation used."""
    t = table[table["transfer"] == transfer]
    if t.empty:
        return pd.DataFrame()
    t = t.assign(text=[corr.format_ci(e, lo, hi) for e, lo, hi in
                       zip(t["estimate"], t["ci_low"], t["ci_high"], strict=True)])
    wide = t.pivot_table(index=["candidate", "orientation"], columns="method", values="text",
                         aggfunc="first").reset_index()
    order = t[t["method"] == "weighted_tau"].set_index("candidate")["estimate"]
    wide = wide.assign(_o=wide["candidate"].map(order)).sort_values("_o", ascending=False)
    cols = ["candidate", "orientation", "weighted_tau", "spearman", "kendall", "partial_spearman"]
    return wide[[c for c in cols if c in wide]].reset_index(drop=True)
