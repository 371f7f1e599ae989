"""Within-trial trends and the generalization claims: does collapse fall while transfer rises?

Split from `analysis.crosstrial.correlate`, whose correlation machinery (one weighted code path,
a cluster bootstrap over trials) these use: per trial, Spearman over epochs of collapse against
epoch and against transfer; across trials, how biased CDNV compares between splits that hold
different numbers of images per class.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from analysis import contract as names
from analysis.crosstrial.correlate import (
    MIN_BOOT_TRIALS,
    correlate,
    primary_transfer,
)
from analysis.crosstrial.runs import StudyRuns


def median_ci(v: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Median of the finite values with a percentile bootstrap 95% CI (none below
    MIN_BOOT_TRIALS values)."""
    v = v[np.isfinite(v)]
    if len(v) < MIN_BOOT_TRIALS:
        return float(np.median(v)) if len(v) else float("nan"), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(v), (n_boot, len(v)))
    lo, hi = np.percentile(np.median(v[idx], axis=1), [2.5, 97.5])
    return float(np.median(v)), float(lo), float(hi)


TREND_COLUMNS = ["trial_index", "epochs", "rho_collapse_epoch", "rho_transfer_epoch",
                 "rho_collapse_transfer", "collapse_first", "collapse_last", "transfer_first",
                 "transfer_last", "falls_while_rises"]


def within_trial_trends(study: StudyRuns, *, collapse: str = names.CDNV_TARGET,
                        transfer: str | None = None, n_boot: int = 2000,
                        seed: int = 0) -> tuple[pd.DataFrame, dict[str, float | int | str]]:
    """Per usable trial with >= 3 evaluated epochs: does `collapse` fall while `transfer` rises?

    Returns:
        A frame with one row per trial (Spearman of each metric with the epoch and with each
        other) and a summary: how many trials show the trend, the median within-trial Spearman
        of collapse vs transfer with a bootstrap CI over trials, and a sign-test p-value.
    """
    transfer = transfer or primary_transfer(study)
    hist = study.usable_history
    rows = []
    if transfer and collapse in hist and transfer in hist:
        for idx, h in hist.groupby("trial_index"):
            h = h[np.isfinite(h[collapse]) & np.isfinite(h[transfer])]
            if len(h) < 3:
                continue
            c, t, e = h[collapse], h[transfer], h["epoch"]
            with np.errstate(invalid="ignore", divide="ignore"):
                rc, rt, rct = (stats.spearmanr(a, b).statistic for a, b in ((e, c), (e, t), (c, t)))
            rows.append([idx, len(h), rc, rt, rct, c.iloc[0], c.iloc[-1], t.iloc[0], t.iloc[-1],
                         bool(rc < 0 and rt > 0)])
    per = pd.DataFrame(rows, columns=TREND_COLUMNS)
    summary: dict[str, float | int | str] = {"collapse": collapse, "transfer": transfer or "",
                                             "n_trials": len(per)}
    if len(per) == 0:
        summary["reason"] = "no usable trial has 3 or more evaluated epochs"
        return per, summary
    r = per["rho_collapse_transfer"].to_numpy(float)
    med, lo, hi = median_ci(r, n_boot=n_boot, seed=seed)
    neg, pos = int((r < 0).sum()), int((r > 0).sum())
    summary.update({
        "n_falls_while_rises": int(per["falls_while_rises"].sum()), "median_rho": med,
        "ci_low": lo, "ci_high": hi, "n_negative": neg, "n_positive": pos,
        "sign_p": float(stats.binomtest(neg, neg + pos).pvalue) if neg + pos else float("nan"),
    })
    return per, summary


# Images per class behind each split's features (flat config keys); source-train features are
# capped at features_per_class.
_PER_CLASS = {"source_train": ("source_train_per_class", "features_per_class"),
              "source_test": ("source_test_per_class",), "target": ("target_per_class",)}


def comparable_cdnv(frame: pd.DataFrame, split: str) -> tuple[pd.Series | None, str]:
    """CDNV of `split` on a scale comparable across splits, and how it was made so.

    Biased variances shrink by (n-1)/n with n images per class, so splits with different n
    are compared through `cdnv_unbiased/<split>`, or failing that the biased value times n/(n-1).
    """
    unbiased, biased = names.collapse_key("cdnv_unbiased", split), names.collapse_key("cdnv", split)
    if unbiased in frame:
        return frame[unbiased], "cdnv_unbiased"
    if biased not in frame:
        return None, f"{biased} not logged"
    keys = _PER_CLASS[split]
    if all(k in frame for k in keys):
        n = frame[list(keys)].astype(float).min(axis=1)
        how = "cdnv x n/(n-1), n images per class from the config"
        return frame[biased] * n / (n - 1), how
    return frame[biased], "biased cdnv, uncorrected (images per class unknown)"


def generalization(study: StudyRuns, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """How well source-train CDNV predicts source-test and target CDNV (the paper's claims).

    Per pair: Spearman over trials (final epoch) and over (trial, epoch) points, and the median
    ratio to/from over trials with a bootstrap CI (1 = collapse carries over unchanged).
    """
    rows = []
    for to in ("source_test", "target"):
        for level, frame in (("trial", study.usable), ("epoch", study.usable_history)):
            a, how_a = comparable_cdnv(frame, "source_train")
            b, how_b = comparable_cdnv(frame, to)
            row: dict[str, object] = {"from": "source_train", "to": to, "level": level,
                                      "variant": how_a if how_a == how_b else f"{how_a} / {how_b}"}
            if a is None or b is None:
                rows.append({**row, "reason": how_a if a is None else how_b})
                continue
            est = correlate(a.to_numpy(float), b.to_numpy(float),
                            groups=frame["trial_index"].to_numpy(), methods=("spearman",),
                            n_boot=n_boot, seed=seed)["spearman"]
            row.update({"spearman": est.estimate, "ci_low": est.ci_low, "ci_high": est.ci_high,
                        "p_value": est.p_value, "n": est.n, "n_trials": est.n_trials,
                        "reason": est.reason})
            if level == "trial":
                ratio = (b / a).to_numpy(float)
                row.update(zip(("median_ratio", "ratio_ci_low", "ratio_ci_high"), median_ci(
                    ratio[ratio > 0], n_boot=n_boot, seed=seed), strict=True))
            rows.append(row)
    return pd.DataFrame(rows)
