"""The observed NCC error on target episodes against the logged bounds on it.

Two bounds, each compared with the classifier it is about:

- the CDNV bound 8 (n-1)(1+1/k) CDNV (`bound/<shape>`, analysis.measure.bound.ncc_error_bound;
  the constant is nctune's own derivation, not the paper's) is about NCC on the raw features the
  CDNV was measured on, so it is compared with `ncc_raw` only. When `ncc_raw` was not measured
  the bound cannot be checked, and `unchecked_bounds` says so: the centred-normalised `ncc`
  error is a different classifier's and proves nothing. When a study logged no CDNV bound it is
  computed from `cdnv/target`.
- the Cantelli bound (`bound_cantelli/<shape>`, analysis.measure.bound.cantelli_error_bound) is
  computed on the features the primary `ncc` classifier sees, and is compared with `ncc`.

For each: how often it holds, how often it is non-vacuous (< 1), and how loose it is (median
bound / error).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import contract as names
from analysis.crosstrial.runs import StudyRuns, describe


@dataclass(frozen=True)
class Bound:
    """A logged bound: its metric name builder and the one classifier it bounds."""

    name: str
    title: str
    key: Callable[[str], str]
    classifier: str


BOUNDS = (Bound("cdnv", "CDNV bound", names.bound_key, "ncc_raw"),
          Bound("cantelli", "Cantelli bound", names.bound_cantelli_key, names.PRIMARY_CLASSIFIER))
COLUMNS = ["bound_name", "trial_index", "epoch", "final", "shape", "n_way", "k_shot",
           "classifier", "cdnv_target", "bound", "bound_source", "error", "error_ci95", "holds",
           "holds_within_ci", "vacuous", "ratio", "gap"]


def _cdnv_bound() -> Callable[[float, int, int], float]:
    from analysis.measure.bound import ncc_error_bound  # imports torch: only when needed

    return ncc_error_bound


def episode_shapes(frame: pd.DataFrame) -> list[str]:
    """Shapes ('5w5s', ...) with an NCC accuracy (`ncc` or `ncc_raw`) logged, in order."""
    clfs = {b.classifier for b in BOUNDS}
    found = {names.split_fewshot_key(c)[0] for c in frame.columns
             if names.is_fewshot_acc(c) and names.split_fewshot_key(c)[1] in clfs}
    return names.sort_shapes(found)


def _bound_values(hist: pd.DataFrame, bound: Bound, shape: str,
                  cdnv: pd.Series) -> tuple[pd.Series, str] | None:
    if bound.key(shape) in hist:
        return hist[bound.key(shape)].astype(float), "logged"
    if bound.name != "cdnv" or not np.isfinite(cdnv).any():
        return None
    n_way, k_shot = names.parse_shape(shape)
    compute = _cdnv_bound()
    values = cdnv.map(lambda v: compute(v, n_way, k_shot) if np.isfinite(v) else np.nan)
    return values, f"computed from {names.CDNV_TARGET}"


def bound_table(study: StudyRuns) -> pd.DataFrame:
    """One row per (bound, usable trial, evaluated epoch, shape): bound, observed error, verdict.

    Columns: holds (error <= bound), holds_within_ci (error - ci95 <= bound: not refuted by the
    episode noise), vacuous (bound >= 1, says nothing), ratio (bound / error: how loose),
    gap (bound - error), final (the trial's final evaluated epoch).
    """
    hist = study.usable_history
    finals = dict(zip(study.final["trial_index"], study.final["final_epoch"], strict=True))
    nan = pd.Series(np.nan, index=hist.index)
    cdnv = hist.get(names.CDNV_TARGET, nan).astype(float)
    parts = []
    for bound in BOUNDS:
        for shape in episode_shapes(hist):
            acc_key = names.fewshot_key(shape, bound.classifier)
            found = _bound_values(hist, bound, shape, cdnv) if acc_key in hist else None
            if found is None:
                continue
            n_way, k_shot = names.parse_shape(shape)
            ci = hist.get(names.fewshot_key(shape, bound.classifier, "ci95"), nan)
            df = pd.DataFrame({
                "bound_name": bound.name, "trial_index": hist["trial_index"],
                "epoch": hist["epoch"], "shape": shape, "n_way": n_way, "k_shot": k_shot,
                "classifier": bound.classifier, "cdnv_target": cdnv, "bound": found[0],
                "bound_source": found[1], "error": 1.0 - hist[acc_key].astype(float),
                "error_ci95": ci.astype(float)})
            parts.append(df[np.isfinite(df["bound"]) & np.isfinite(df["error"])])
    if not parts:
        return pd.DataFrame(columns=COLUMNS)
    t = pd.concat(parts, ignore_index=True)
    t["final"] = t["epoch"] == t["trial_index"].map(finals)
    t["holds"] = t["error"] <= t["bound"]
    t["holds_within_ci"] = t["error"] - t["error_ci95"].fillna(0.0) <= t["bound"]
    t["vacuous"] = t["bound"] >= 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        t["ratio"] = t["bound"] / t["error"]
    t["gap"] = t["bound"] - t["error"]
    return t[COLUMNS]


def unchecked_bounds(study: StudyRuns) -> list[str]:
    """One sentence per (bound, shape) that was logged but cannot be checked, and why."""
    hist = study.usable_history
    out = []
    for bound in BOUNDS:
        for shape in names.sort_shapes(
                c.split("/")[1] for c in hist.columns
                if c.startswith(bound.key("")) and names.is_shape(c.split("/")[1])):
            if names.fewshot_key(shape, bound.classifier) not in hist:
                out.append(f"The {bound.title} for {shape} cannot be checked: it is about "
                           f"the {bound.classifier} classifier, whose accuracy was not measured "
                           f"(add {bound.classifier} to evaluation.classifiers).")
    return out


def bound_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per bound and shape: how often it holds, how often it says anything, how loose it is."""
    rows = []
    for (bound_name, shape), g in table.groupby(["bound_name", "shape"], sort=False):
        fin = g[g["final"]]
        informative = g[~g["vacuous"]]
        rows.append({
            "bound_name": bound_name, "shape": shape, "classifier": g["classifier"].iloc[0],
            "bound_source": g["bound_source"].iloc[0], "points": len(g),
            "trials": g["trial_index"].nunique(), "holds_frac": g["holds"].mean(),
            "holds_within_ci_frac": g["holds_within_ci"].mean(),
            "non_vacuous_frac": 1.0 - g["vacuous"].mean(),
            "median_ratio": float(np.median(g["ratio"])),
            "median_gap": float(np.median(g["gap"])),
            # Holding trivially (bound >= 1) says nothing; this is the informative part.
            "non_vacuous_holds_frac": informative["holds"].mean() if len(informative) else np.nan,
            "final_holds_frac": fin["holds"].mean() if len(fin) else np.nan,
            "final_non_vacuous_frac": 1.0 - fin["vacuous"].mean() if len(fin) else np.nan,
            "final_median_ratio": float(np.median(fin["ratio"])) if len(fin) else np.nan,
        })
    return pd.DataFrame(rows)


def bound_sentences(summary: pd.DataFrame) -> list[str]:
    """One plain-language line per bound and shape for the report's verdict."""
    titles = {b.name: b.title for b in BOUNDS}
    titles["cdnv"] += " (8(n−1)(1+1/k)·CDNV, a constant of nctune's derivation, not the paper's)"
    out = []
    for r in summary.itertuples():
        err = describe(names.fewshot_key(r.shape, r.classifier)).replace("accuracy", "error")
        line = (f"The {titles.get(r.bound_name, r.bound_name)} on the {err} held at "
                f"{100 * r.holds_frac:.0f}% of {r.points} (trial, epoch) points")
        if r.non_vacuous_frac < 1:
            line += f", but {100 * (1 - r.non_vacuous_frac):.0f}% of them were vacuous (≥ 1)"
        if np.isfinite(r.non_vacuous_holds_frac):
            line += f"; where it said something it held at {100 * r.non_vacuous_holds_frac:.0f}%"
        out.append(line + f"; median bound / error {r.median_ratio:.2g}.")
    return out
