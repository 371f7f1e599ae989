"""The observed NCC error on target episodes against the paper's CDNV bound.

Galanti et al. bound the expected error of the nearest-class-centre classifier on new classes
by a multiple of the target CDNV (the trainable logs it as `bound/<n>w<k>s`). The bound is about
NCC on the raw features the CDNV was measured on, so `ncc_raw` is the classifier compared when it
was logged; otherwise the primary `ncc` (centred-then-L2) stands in and the table says so.

When a study logged no bound metric, it is computed from `cdnv/target` with
`analysis.measure.fewshot.ncc_error_bound` if that function exists.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd

from analysis.crosstrial.runs import StudyRuns, describe

SHAPE = re.compile(r"^(\d+)w(\d+)s$")
CLASSIFIERS = ("ncc_raw", "ncc")  # preference order: the bound's own classifier first
COLUMNS = ["trial_index", "epoch", "final", "shape", "n_way", "k_shot", "classifier",
           "cdnv_target", "bound", "bound_source", "error", "error_ci95", "holds",
           "holds_within_ci", "vacuous", "ratio", "gap"]


def _bound_function() -> Callable[[float, int, int], float] | None:
    try:
        from analysis.measure.bound import ncc_error_bound
    except ImportError:
        return None
    return ncc_error_bound


def episode_shapes(frame: pd.DataFrame) -> list[str]:
    """Shapes ('5w5s', ...) with an NCC accuracy logged, in (n_way, k_shot) order."""
    found = {c.split("/")[1] for c in frame.columns
             if c.startswith("fewshot/") and c.endswith("/acc") and c.split("/")[2] in CLASSIFIERS}
    found = {s for s in found if SHAPE.match(s)}
    return sorted(found, key=lambda s: tuple(int(v) for v in SHAPE.findall(s)[0]))


def bound_table(study: StudyRuns) -> pd.DataFrame:
    """One row per (usable trial, evaluated epoch, shape): bound, observed error, verdict.

    Columns: holds (error <= bound), holds_within_ci (error - ci95 <= bound: not refuted by the
    episode noise), vacuous (bound >= 1, says nothing), ratio (bound / error: how loose),
    gap (bound - error), final (the trial's final evaluated epoch).
    """
    hist = study.usable_history
    finals = dict(zip(study.final["trial_index"], study.final["final_epoch"], strict=True))
    compute: Callable[[float, int, int], float] | None = None
    parts = []
    for shape in episode_shapes(hist):
        n_way, k_shot = (int(v) for v in SHAPE.findall(shape)[0])
        clf = next(c for c in CLASSIFIERS if f"fewshot/{shape}/{c}/acc" in hist)
        acc = hist[f"fewshot/{shape}/{clf}/acc"].astype(float)
        ci = hist.get(f"fewshot/{shape}/{clf}/ci95", pd.Series(np.nan, index=hist.index))
        cdnv = hist.get("cdnv/target", pd.Series(np.nan, index=hist.index)).astype(float)
        if f"bound/{shape}" in hist:
            bound, source = hist[f"bound/{shape}"].astype(float), "logged"
        elif (compute := compute or _bound_function()) is not None:  # imports torch: lazily
            bound = cdnv.map(lambda v, n=n_way, k=k_shot: compute(v, n, k)
                             if np.isfinite(v) else np.nan)
            source = "computed from cdnv/target"
        else:
            continue
        df = pd.DataFrame({
            "trial_index": hist["trial_index"], "epoch": hist["epoch"], "shape": shape,
            "n_way": n_way, "k_shot": k_shot, "classifier": clf, "cdnv_target": cdnv,
            "bound": bound, "bound_source": source, "error": 1.0 - acc,
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


def bound_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per shape: how often the bound holds, how often it says anything, how loose it is."""
    rows = []
    for shape, g in table.groupby("shape", sort=False):
        fin = g[g["final"]]
        informative = g[~g["vacuous"]]
        rows.append({
            "shape": shape, "classifier": g["classifier"].iloc[0],
            "bound_source": g["bound_source"].iloc[0], "points": len(g),
            "trials": g["trial_index"].nunique(), "holds_frac": g["holds"].mean(),
            "holds_within_ci_frac": g["holds_within_ci"].mean(),
            "non_vacuous_frac": 1.0 - g["vacuous"].mean(),
            "median_ratio": float(np.median(g["ratio"])),
            "median_gap": float(np.median(g["gap"])),
            # Holding trivially (bound >= 1) says nothing; this is the informative part.
            "non_vacuous_holds_frac": informative["holds"].mean() if len(informative) else np.nan,
            "final_holds_frac": fin["holds"].mean() if len(fin) else np.nan,
            "final_median_ratio": float(np.median(fin["ratio"])) if len(fin) else np.nan,
        })
    return pd.DataFrame(rows)


def bound_sentences(summary: pd.DataFrame) -> list[str]:
    """One plain-language line per shape for the report's verdict."""
    out = []
    for r in summary.itertuples():
        err = describe(f"fewshot/{r.shape}/{r.classifier}/acc").replace("accuracy", "error")
        line = (f"The CDNV bound on the {err} held at "
                f"{100 * r.holds_frac:.0f}% of {r.points} (trial, epoch) points")
        if r.non_vacuous_frac < 1:
            line += f", but {100 * (1 - r.non_vacuous_frac):.0f}% of them were vacuous (≥ 1)"
        if np.isfinite(r.non_vacuous_holds_frac):
            line += f"; where it said something it held at {100 * r.non_vacuous_holds_frac:.0f}%"
        out.append(line + f"; median bound / error {r.median_ratio:.2g}.")
    return out
