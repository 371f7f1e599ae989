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

Spearman and partial Spearman and their intervals come from `analysis.crosstrial.correlate`;
Kendall tau-b and tau_w from `rank_tau`, by sorting, on one set of trial resamples shared by
every candidate and the baseline, so the verdict can compare the winner with the baseline
adjusting for how many candidates competed (`simultaneous`, a max-statistic bootstrap). A
series logged under two names is one candidate. The replicate count shrinks with the study's
size (`replicate_count`; timed by benchmarks/leaderboard_scaling.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import contract as names
from analysis.crosstrial import correlate as corr
from analysis.crosstrial import rank_tau, simultaneous
from analysis.crosstrial.runs import describe

BASELINE = names.SOURCE_TEST_ACC
POOLED_NCTI = "ncti_pooled"  # formed here across trials, not a logged metric
METHODS = ("spearman", "partial_spearman")  # through correlate; kendall and tau_w: rank_tau
MIN_REPLICATES = 200
# The "clearly better than the baseline" bound: one-sided 97.5%, as the two-sided 95% interval
# it replaces; at the nominal 95% the bootstrap-t claimed it in 7.8% of 1000 null studies of 16
# trials (tests/analysis/crosstrial/test_calibration_leaderboard.py).
CLAIM_LEVEL = 0.975
WORK_BUDGET = 4e8  # replicates x pairs x n log2 n: ~400 at 256 trials x 480 pairs
COLUMNS = ["candidate", "kind", "orientation", "transfer", "method", "estimate", "ci_low",
           "ci_high", "n_trials", "reason", "aliases"]


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


def replicate_count(n_trials: int, n_pairs: int, n_boot: int) -> int:
    """Bootstrap replicates for a leaderboard of `n_pairs` (candidate, accuracy) pairs.

    Each replicate costs about n log2 n per pair (rank_tau, correlate's ranks), so the count is
    `n_boot` while WORK_BUDGET / (n_pairs n log2 n) allows it, never fewer than MIN_REPLICATES:
    2000 at the demo's 16 trials x 14 candidates x 4 accuracies, about 400 at 256 trials and
    200 at 1,000 trials x 60 candidates x 8 accuracies (benchmarks/leaderboard_scaling.py).
    """
    work = max(1, n_pairs) * max(2, n_trials) * np.log2(max(2, n_trials))
    return int(min(n_boot, max(MIN_REPLICATES, WORK_BUDGET // work)))


def weighted_tau(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """scipy.stats.weightedtau(x[b], y[b]) for every row b of (B, n) arrays (rank_tau, by
    sorting: Vigna 2015's additive hyperbolic tau_w, scipy's defaults). Tested against scipy."""
    return rank_tau.weighted_tau(x, y)


@dataclass(frozen=True)
class TauW:
    """tau_w with its percentile interval and the bootstrap replicates (for paired contrasts);
    `aliases`: other names under which the very same series was logged (counted once)."""

    estimate: float
    ci_low: float
    ci_high: float
    replicates: np.ndarray
    aliases: tuple[str, ...] = ()


def _percentile_ci(reps: np.ndarray) -> tuple[float, float]:
    """np.percentile(finite reps, [2.5, 97.5]) (linear interpolation), without its overhead."""
    ok = np.sort(reps[np.isfinite(reps)])
    if not len(ok):
        return float("nan"), float("nan")
    pos = np.array([0.025, 0.975]) * (len(ok) - 1)
    i = np.floor(pos).astype(int)
    j = np.minimum(i + 1, len(ok) - 1)
    lo, hi = ok[i] + (pos - i) * (ok[j] - ok[i])
    return float(lo), float(hi)


def _taus(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> tuple[TauW, TauW]:
    """tau_w and Kendall tau-b of (x, y) with 95% percentile intervals over the resamples
    `counts` (B, n): draws of all trials, the same for every candidate; trials where x or y is
    missing are dropped from each resample (so every candidate stays paired with the baseline).
    """
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    nan = float("nan")
    if len(x) < corr.MIN_TRIALS or np.ptp(x) == 0 or np.ptp(y) == 0:
        empty = TauW(nan, nan, nan, np.full(len(counts), nan))
        return empty, empty
    both = rank_tau.taus(x, y, np.vstack([np.ones(len(x)), counts[:, keep]]))  # row 0: sample
    out = []
    for est, reps in ((t[:1], t[1:]) for t in both):
        lo, hi = _percentile_ci(reps) if len(x) >= corr.MIN_BOOT_TRIALS else (nan, nan)
        out.append(TauW(float(est[0]), float(lo), float(hi), reps))
    return out[0], out[1]


def _why_not(x: np.ndarray, y: np.ndarray) -> str:
    """Why tau_w / tau-b has no estimate or no interval ('' if it has both)."""
    keep = np.isfinite(x) & np.isfinite(y)
    n = int(keep.sum())
    if n < corr.MIN_TRIALS:
        return f"{n} trial(s) with both metrics; at least {corr.MIN_TRIALS} needed"
    for what, v in (("first metric", x[keep]), ("second metric", y[keep])):
        if np.ptp(v) == 0:
            return f"the {what} is constant over the {n} trials"
    return (f"{n} trials are too few for a bootstrap interval" if n < corr.MIN_BOOT_TRIALS
            else "")


def tau_w(x: np.ndarray, y: np.ndarray, *, n_boot: int, seed: int) -> TauW:
    """tau_w of (x, y) over trials with a 95% percentile interval on the same replicates as
    `correlate.correlate` uses (cluster_weights with the same seed)."""
    counts = corr.cluster_weights(np.arange(len(x)), n_boot, np.random.default_rng(seed))
    return _taus(np.asarray(x, float), np.asarray(y, float), counts)[0]


def aliases(frame: pd.DataFrame, cands: list[str]) -> dict[str, list[str]]:
    """{kept candidate: [the other names of the very same series]}: a series logged under two
    names (at the default taps `layer/layer4/<stat>/<split>` is the penultimate `<stat>/<split>`)
    is one candidate; the first name in `candidates` order is kept."""
    kept: dict[str, list[str]] = {}
    seen: dict[bytes, str] = {}
    for c in cands:
        v = orientation(c) * frame[c].to_numpy(float)
        key = np.where(np.isnan(v), np.inf, v + 0.0).tobytes()  # +0.0: -0.0 == 0.0
        if key in seen:
            kept[seen[key]].append(c)
        else:
            seen[key], kept[c] = c, []
    return kept


def leaderboard_table(frame: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0,
                      tau_boot: int | None = None, methods: tuple[str, ...] = METHODS,
                      ) -> tuple[pd.DataFrame, dict[tuple[str, str], TauW]]:
    """Every (candidate, few-shot accuracy, method) over the trials of `frame` (one row per
    trial, its final epoch), oriented; and the tau_w replicates per (candidate, transfer).

    Aliases (the same series under two names) are one candidate, named in `aliases`.

    Args:
        frame: usable trials at their final epoch (StudyRuns.usable).
        n_boot: the most bootstrap replicates for every method (fewer for large studies:
            `replicate_count`).
        tau_boot: replicates, overriding `replicate_count` (tests).
        methods: correlate's methods to add (() leaves Spearman and partial Spearman out: the
            calibration simulations need only tau_w).
    """
    frame = with_pooled_ncti(frame)
    kept = aliases(frame, candidates(frame))
    targets = corr.transfer_columns(frame)
    n_rep = tau_boot or replicate_count(len(frame), len(kept) * len(targets), n_boot)
    control = frame[BASELINE].to_numpy(float) if BASELINE in frame else None
    groups = frame["trial_index"].to_numpy() if "trial_index" in frame else np.arange(len(frame))
    counts = corr.cluster_weights(groups, n_rep, np.random.default_rng(seed))
    rows, taus = [], {}
    ys = {t: frame[t].to_numpy(float) for t in targets}
    for cand, also in kept.items():
        sign = orientation(cand)
        x = sign * frame[cand].to_numpy(float)
        for target, y in ys.items():
            res = corr.correlate(x, y, groups=groups, control=None if cand == BASELINE
                                 else control, methods=methods, n_boot=n_rep,
                                 seed=seed) if methods else {}
            head = {"candidate": cand, "kind": _kind(cand),
                    "orientation": "higher is better" if sign > 0 else "lower is better",
                    "transfer": target, "aliases": "; ".join(also)}
            rows += [{**head, "method": e.method, "estimate": e.estimate, "ci_low": e.ci_low,
                      "ci_high": e.ci_high, "n_trials": e.n_trials,
                      "reason": "the baseline is the control" if cand == BASELINE
                      and e.method == "partial_spearman"
                      else e.reason or str(getattr(e, "why", "") or "")}
                     for e in res.values()]
            tw, tb = _taus(x, y, counts)
            taus[cand, target] = TauW(tw.estimate, tw.ci_low, tw.ci_high, tw.replicates,
                                      tuple(also))
            n_ok = int((np.isfinite(x) & np.isfinite(y)).sum())
            rows += [{**head, "method": m, "estimate": t.estimate, "ci_low": t.ci_low,
                      "ci_high": t.ci_high, "n_trials": n_ok, "reason": _why_not(x, y)}
                     for m, t in (("kendall", tb), ("weighted_tau", tw))]
    return pd.DataFrame(rows, columns=COLUMNS), taus


@dataclass(frozen=True)
class Verdict:
    """The leaderboard's answer for one few-shot accuracy.

    `diff_ci` is (the winner's simultaneous 97.5% lower bound, +inf) for tau_w(candidate) -
    tau_w(baseline), one bound per candidate over all `n_compared` of them
    (simultaneous.max_t_intervals, one-sided), so it accounts for the winner having been picked
    as the best of many.
    """

    transfer: str
    winner: str
    winner_tau_w: TauW
    baseline_tau_w: TauW | None
    diff_ci: tuple[float, float]
    n_candidates: int = 0
    n_compared: int = 0
    n_aliases: int = 0

    @property
    def separates(self) -> bool:
        """Whether the winner's tau_w is clearly above the baseline's (its simultaneous lower
        bound on the difference above 0)."""
        return bool(np.isfinite(self.diff_ci[0]) and self.diff_ci[0] > 0)


def verdict(taus: dict[tuple[str, str], TauW], transfer: str) -> Verdict | None:
    """The candidate with the highest tau_w against `transfer`, and how it compares with the
    baseline (source test accuracy): its row of the max-t simultaneous lower bounds over every
    candidate's difference from the baseline on the same bootstrap resamples."""
    mine = {c: t for (c, y), t in taus.items() if y == transfer and np.isfinite(t.estimate)}
    if not mine:
        return None
    winner = max(mine, key=lambda c: mine[c].estimate)
    base = mine.get(BASELINE)
    n_alias = sum(len(t.aliases) for t in mine.values())
    diff: tuple[float, float] = (float("nan"), float("nan"))
    rivals = [c for c in mine if c != BASELINE and np.isfinite(mine[c].ci_low)]
    n_compared = 0
    if base is not None and winner != BASELINE and winner in rivals:
        d = np.array([mine[c].estimate - base.estimate for c in rivals])
        reps = np.stack([mine[c].replicates - base.replicates for c in rivals])
        sim = simultaneous.max_t_intervals(d, reps, level=CLAIM_LEVEL, one_sided=True)
        i = rivals.index(winner)
        diff, n_compared = (float(sim.low[i]), float(sim.high[i])), len(rivals)
    return Verdict(transfer, winner, mine[winner], base, diff, len(mine), n_compared, n_alias)


def verdict_sentence(v: Verdict | None) -> str:
    """The plain-words verdict the report opens its leaderboard with."""
    if v is None:
        return "No predictor could be ranked: too few trials with both it and a few-shot accuracy."
    w = corr.format_ci(v.winner_tau_w.estimate, v.winner_tau_w.ci_low, v.winner_tau_w.ci_high)
    same = (f" ({v.n_aliases} series logged under a second name counted once)"
            if v.n_aliases else "")
    line = (f"Of {v.n_candidates} candidates{same}, {label(v.winner)} ranks the trials by "
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
    est, low = (f"{u:+.2f}".replace("-", "−") for u in (v.winner_tau_w.estimate - b.estimate,
                                                         v.diff_ci[0]))
    gap = (f"{est}, at least {low} (a {100 * CLAIM_LEVEL:g}% lower bound adjusted for comparing "
           f"all {v.n_compared} candidates with it: max-statistic bootstrap, Romano & Wolf 2005)")
    if v.separates:
        return line + (f" That is clearly better than source test accuracy (τ_w {base}): the "
                       f"difference is {gap}.")
    return line + (f" It does not separate from source test accuracy (τ_w {base}): the "
                   f"difference is {gap}, which does not exclude 0.")


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


def _cell(row: pd.Series) -> str:
    """'estimate [95% CI]'; '—' for no estimate; a partial that cannot separate the two
    explanations is 'withheld (see note)' as in the report's tables; 'estimate [no interval]'
    for other NaN bounds."""
    est, lo, hi = row["estimate"], row["ci_low"], row["ci_high"]
    if not np.isfinite(est):
        return "—"
    text = corr.cell(row)
    return text + ("" if (np.isfinite(lo) and np.isfinite(hi)) or text.startswith("withheld")
                   else " [no interval]")


def leaderboard_view(table: pd.DataFrame, transfer: str) -> pd.DataFrame:
    """One row per candidate against `transfer`, best tau_w first: each method as
    'estimate [95% CI]', the orientation used, and the other names of the same series."""
    t = table[table["transfer"] == transfer]
    if t.empty:
        return pd.DataFrame()
    t = t.assign(text=[_cell(row) for _, row in t.iterrows()])
    wide = t.pivot_table(index=["candidate", "orientation"], columns="method", values="text",
                         aggfunc="first").reset_index()
    order = t[t["method"] == "weighted_tau"].set_index("candidate")["estimate"]
    wide = wide.assign(_o=wide["candidate"].map(order)).sort_values("_o", ascending=False)
    cols = ["candidate", "orientation", "weighted_tau", "spearman", "kendall", "partial_spearman"]
    view = wide[[c for c in cols if c in wide]].reset_index(drop=True)
    also = t.drop_duplicates("candidate").set_index("candidate").get("aliases")
    if also is not None and (also.fillna("") != "").any():
        view["same series as"] = view["candidate"].map(also).fillna("")
    return view
