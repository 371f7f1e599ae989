"""Where in the network does collapse predict transfer? The report's per-layer section.

Trials log, at every tap of the backbone (a stage's pooled output, `trainables.taps`), target
CDNV and few-shot NCC accuracy (`layer/<tap>/cdnv/target`, `layer/<tap>/fewshot/<shape>/ncc/acc`).
Across trials at their final epoch this module correlates, per tap, (a) that tap's target CDNV
and (b) that tap's own NCC accuracy with the study's headline few-shot accuracy (penultimate
features): Spearman with a 95% Fisher-z interval and the partial Spearman given source
accuracy, through `analysis.crosstrial.correlate` (the same machinery as the main table). Kornblith
et al. (NeurIPS 2021) and Masarczyk et al. (NeurIPS 2023, "tunnel effect") found that later layers
compress and can lose transferable information; the figures show whether these trials do:
accuracy and CDNV against depth, one line per trial, and a tap x epoch heat map of target CDNV
for the best and the worst trial.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from analysis import contract as names
from analysis.crosstrial import correlate as corr
from analysis.crosstrial import dense_figures as dense
from analysis.crosstrial.correlate import format_ci
from analysis.crosstrial.plotting import log_axis, log_ticks
from analysis.crosstrial.runs import describe

PENULTIMATE = "penultimate"
PREDICTORS = {"cdnv": "target CDNV", "ncc": "NCC accuracy"}
METHODS = ("spearman", "partial_spearman")
COLUMNS = ["tap", "depth", "predictor", "metric", "method", "estimate", "ci_low", "ci_high",
           "p_value", "n_trials", "reason"]


def depth_order(taps: list[str]) -> list[str]:
    """Taps from input to output. Metric names do not carry depth; the natural order of the
    names does for every registered backbone (act1 < layer1 < ... < layer4; conv1 < groups.0;
    blocks.0 < blocks.1): digits compare as numbers."""
    def key(tap: str) -> list[Any]:
        return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", tap) if p]

    return sorted(taps, key=key)


def tap_columns(frame: pd.DataFrame, transfer: str) -> list[tuple[str, str, str]]:
    """(tap, target-CDNV column, NCC-accuracy column) by depth, the penultimate layer last
    unless the last tap's columns equal it (a ResNet pools its last stage into the penultimate
    features: then that tap is labelled '<tap> = penultimate' and no separate row is added)."""
    shape = names.split_fewshot_key(transfer)[0]
    taps = depth_order(names.layer_taps(frame.columns))
    rows = [(tap, names.layer_key(tap, "cdnv", names.TARGET), names.layer_fewshot_key(tap, shape))
            for tap in taps]
    pen = (PENULTIMATE, names.CDNV_TARGET, names.fewshot_key(shape, names.PRIMARY_CLASSIFIER))
    if rows and pen[1] in frame and rows[-1][1] in frame:
        a, b = frame[rows[-1][1]].to_numpy(float), frame[pen[1]].to_numpy(float)
        if np.allclose(a, b, rtol=1e-9, equal_nan=True):
            rows[-1] = (f"{rows[-1][0]} = {PENULTIMATE}", *rows[-1][1:])
            return rows
    return [*rows, pen] if pen[1] in frame else rows


def layer_table(final: pd.DataFrame, transfer: str | None, *, n_boot: int = 2000,
                seed: int = 0) -> pd.DataFrame:
    """Per tap and predictor (target CDNV, NCC accuracy), its correlation with `transfer`
    across the trials of `final` (one row per trial at its final epoch)."""
    if transfer is None or not names.is_fewshot_acc(transfer) or transfer not in final:
        return pd.DataFrame(columns=COLUMNS)
    y = final[transfer].to_numpy(float)
    groups = final["trial_index"].to_numpy()
    control = final[corr.CONTROL].to_numpy(float) if corr.CONTROL in final else None
    rows = []
    for depth, (tap, cdnv_col, acc_col) in enumerate(tap_columns(final, transfer)):
        for predictor, col in (("cdnv", cdnv_col), ("ncc", acc_col)):
            x = final[col].to_numpy(float) if col in final else None
            if x is None or np.allclose(x, y, rtol=1e-9, equal_nan=True):
                continue  # the headline against itself says nothing
            res = corr.correlate(x, y, groups=groups, control=control,
                                 methods=METHODS, n_boot=n_boot, seed=seed)
            rows += [{"tap": tap, "depth": depth, "predictor": predictor, "metric": col,
                      **{k: getattr(e, k) for k in COLUMNS[4:]}} for e in res.values()]
    return pd.DataFrame(rows, columns=COLUMNS)


def best_tap(table: pd.DataFrame) -> pd.Series | None:
    """The tap whose target CDNV has the largest |Spearman| with the headline, or None."""
    s = table[(table["predictor"] == "cdnv") & (table["method"] == "spearman")]
    s = s[np.isfinite(s["estimate"].astype(float))]
    if not len(s):
        return None
    return s.loc[s["estimate"].abs().astype(float).idxmax()]


def _row(table: pd.DataFrame, tap: str, predictor: str, method: str) -> pd.Series | None:
    r = table[(table["tap"] == tap) & (table["predictor"] == predictor)
              & (table["method"] == method)]
    return r.iloc[0] if len(r) else None


def layer_sentences(table: pd.DataFrame, final: pd.DataFrame, transfer: str | None) -> list[str]:
    """The section's plain-words verdict: which tap's collapse predicts transfer best, how the
    penultimate compares, and where few-shot accuracy peaks with depth."""
    if not len(table) or transfer is None:
        return ["No per-layer metrics were logged (evaluation.layers: none, or a study from "
                "before taps existed), or no few-shot accuracy to compare them with."]
    best = best_tap(table)
    if best is None:
        why = table["reason"].dropna().astype(str)
        return [f"No per-layer correlation: {why.iloc[0] if len(why) else 'no finite values'}."]
    n = int(best.n_trials)
    clear = bool(np.isfinite(best.ci_low) and (best.ci_low > 0 or best.ci_high < 0))
    way = ("lower CDNV there went with higher accuracy" if best.estimate < 0 else
           "but higher CDNV there went with higher accuracy, the opposite of what 'collapse "
           "predicts transfer' expects")
    out = [f"Across {n} trials at their final epoch, the target CDNV at {best.tap} ranked the "
           f"trials' {describe(transfer)} most closely of all taps (largest |Spearman|): "
           f"{format_ci(best.estimate, best.ci_low, best.ci_high)}"
           + ("" if clear else ", an interval that covers 0") + f"; {way}."
           + (f" With only {n} trials, and {len(set(table['tap']))} taps to choose from, treat "
              "this as preliminary." if n < 10 else "")]
    part = _row(table, best.tap, "cdnv", "partial_spearman")
    if part is not None and np.isfinite(part.estimate) and np.isfinite(part.ci_low):
        out.append(f"At equal source accuracy (partial Spearman) it is "
                   f"{format_ci(part.estimate, part.ci_low, part.ci_high)}.")
    elif part is not None and part.reason:
        out.append(f"At equal source accuracy there is no partial Spearman: {part.reason}.")
    taps = list(dict.fromkeys(table["tap"]))
    last = taps[-1]
    pen = _row(table, last, "cdnv", "spearman")
    if pen is not None and last != best.tap and PENULTIMATE in last:
        out.append(f"At the penultimate layer ({last}) it is "
                   f"{format_ci(pen.estimate, pen.ci_low, pen.ci_high)}: "
                   + ("read the difference against the overlap of the intervals."
                      if np.isfinite(pen.ci_low) else "too few trials for intervals."))
    out += _peak_sentence(final, transfer)
    return out


def _peak_sentence(final: pd.DataFrame, transfer: str) -> list[str]:
    """Where NCC accuracy peaks with depth: per trial, the tap with the highest accuracy."""
    cols = tap_columns(final, transfer)
    accs = pd.DataFrame({tap: final[acc] for tap, _, acc in cols if acc in final})
    accs = accs.dropna(how="any")
    if accs.shape[1] < 2 or not len(accs):
        return []
    peak = accs.idxmax(axis=1).value_counts()
    top, count = str(peak.index[0]), int(peak.iloc[0])
    end = accs.columns[-1]
    drop = (accs.max(axis=1) - accs[end]).median()
    if top == end:
        return [f"Few-shot NCC accuracy was highest at the last tap ({end}) in {count} of "
                f"{len(accs)} trials: no sign of a tunnel in these trials."]
    text = (f"Few-shot NCC accuracy peaked at {top} in {count} of {len(accs)} trials; the last "
            f"tap ({end}) was a median {100 * drop:.1f} points below each trial's peak")
    return [text + (" (a tunnel: later layers lose transferable information)."
                    if drop > 0.01 else ".")]


def layer_parent_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Parent-run metrics: per tap the two Spearman estimates, and the best tap's depth
    (its index among the measured taps, 0 = nearest the input), Spearman with its interval,
    and partial Spearman."""
    out: dict[str, float] = {}
    for r in table[table["method"] == "spearman"].itertuples():
        tap = str(r.tap).split(" = ")[0]
        out[names.analysis_key("layers", "spearman", tap, PREDICTORS[r.predictor]
                               .replace(" ", "_").lower())] = float(r.estimate)
    best = best_tap(table)
    if best is not None:
        out[names.analysis_key("layers", "best", "depth")] = float(best.depth)
        for k in ("estimate", "ci_low", "ci_high"):
            out[names.analysis_key("layers", "best", f"spearman_{k}")] = float(best[k])
        part = _row(table, best.tap, "cdnv", "partial_spearman")
        if part is not None:
            out[names.analysis_key("layers", "best", "partial_spearman")] = float(part.estimate)
    return {k: v for k, v in out.items() if np.isfinite(v)}


def depth_figure(final: pd.DataFrame, transfer: str) -> Figure:
    """NCC accuracy and target CDNV against depth at the final epoch, a line per trial,
    coloured by the headline accuracy."""
    cols = tap_columns(final, transfer)
    taps = [tap.replace(f" = {PENULTIMATE}", f"\n= {PENULTIMATE}") for tap, _, _ in cols]
    x = np.arange(len(cols))
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_acc, ax_cdnv = fig.subplots(1, 2)
    y = final[transfer].to_numpy(float)
    norm = Normalize(np.nanmin(y), max(np.nanmax(y), np.nanmin(y) + 1e-9))
    cmap = colormaps["viridis"]
    if dense.is_dense(len(final)):
        _depth_bands(ax_acc, ax_cdnv, final, transfer, cols, x)
    else:
        for i, row in final.reset_index(drop=True).iterrows():
            colour = cmap(norm(y[i])) if np.isfinite(y[i]) else "0.6"
            acc = [100 * row.get(a, np.nan) for _, _, a in cols]
            cdnv = [row.get(c, np.nan) for _, c, _ in cols]
            ax_acc.plot(x, acc, color=colour, marker="o", ms=3, lw=1.1, alpha=0.85)
            ax_cdnv.plot(x, cdnv, color=colour, marker="o", ms=3, lw=1.1, alpha=0.85)
    shape = names.split_fewshot_key(transfer)[0]
    ax_acc.set_ylabel(f"{shape} NCC accuracy (%)")
    ax_cdnv.set_ylabel("target CDNV (log scale)")
    log_axis(ax_cdnv, "y")
    for ax in (ax_acc, ax_cdnv):
        ax.set_xticks(x, taps, fontsize=9)
        ax.set_xlabel("tap (input → output)")
        ax.grid(True, which="major", alpha=0.3)
    ax_acc.set_title("Few-shot accuracy by depth", fontsize=11)
    ax_cdnv.set_title("Collapse on the new classes by depth", fontsize=11)
    if dense.is_dense(len(final)):
        dense.named_legend(fig, dense.NAMED, describe(transfer))
        fig.suptitle(f"Where in the network, final epoch: median and quantile bands over "
                     f"{len(final)} trials", fontsize=11)
        return fig
    from matplotlib.cm import ScalarMappable

    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=[ax_acc, ax_cdnv], shrink=0.9,
                      pad=0.02)
    cb.set_label(f"{describe(transfer)} (penultimate)")
    fig.suptitle(f"Where in the network, final epoch: each line a trial ({len(final)} trials)",
                 fontsize=11)
    return fig


def _depth_bands(ax_acc: Any, ax_cdnv: Any, final: pd.DataFrame, transfer: str,
                 cols: list[tuple[str, str, str]], x: np.ndarray) -> None:
    """Many trials: per tap, the median and quantile bands over trials, and the named best and
    worst trials' own lines (analysis.crosstrial.dense_figures)."""
    named = dense.extremes(final, transfer)
    f = final.set_index("trial_index")
    for ax, pick, scale in ((ax_acc, 2, 100.0), (ax_cdnv, 1, 1.0)):
        blank = np.full(len(f), np.nan)  # rows: taps, columns: trials
        table = pd.DataFrame([f[tap[pick]].to_numpy(float) if tap[pick] in f else blank
                              for tap in cols], columns=f.index)
        dense.bands(ax, x, scale * table.to_numpy(float), label=f"{len(final)} trials")
        dense.named_lines(ax, table, named, scale=scale, x=x)
    ax_acc.legend(loc="best", fontsize=8, frameon=False)


def heatmap_figure(final: pd.DataFrame, history: pd.DataFrame, transfer: str) -> Figure | None:
    """Target CDNV per tap (rows) and epoch (columns) for the trial with the highest and the
    one with the lowest headline accuracy, on one log colour scale."""
    ranked = final.dropna(subset=[transfer]).sort_values(transfer)
    if len(ranked) < 2:
        return None
    cols = tap_columns(final, transfer)
    picks = [("best", ranked.iloc[-1]), ("worst", ranked.iloc[0])]
    grids = []
    for _, trial in picks:
        h = history[history["trial_index"] == trial.trial_index].sort_values("epoch")
        h = h.dropna(subset=[c for _, c, _ in cols if c in h], how="all")
        grids.append((h["epoch"].to_numpy(int),
                       np.array([h[c].to_numpy(float) if c in h else np.full(len(h), np.nan)
                                 for _, c, _ in cols])))
    vals = np.concatenate([g.ravel() for _, g in grids])
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if not len(vals):
        return None
    norm = LogNorm(vals.min(), max(vals.max(), vals.min() * 1.01))
    fig = Figure(figsize=(11, 0.5 * len(cols) + 2.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (label, trial), (epochs, grid) in zip(axes, picks, grids, strict=True):
        im = ax.imshow(grid, norm=norm, cmap="magma_r", aspect="auto")
        ax.set_xticks(np.arange(len(epochs)), [str(e) for e in epochs])
        ax.set_yticks(np.arange(len(cols)), [tap for tap, _, _ in cols])
        ax.set_xlabel("epoch")
        for (r, c), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(c, r, f"{v:.2g}", ha="center", va="center", fontsize=7,
                        color="white" if norm(v) > 0.6 else "black")
        ax.set_title(f"{label} trial #{int(trial.trial_index)}: {describe(transfer)} "
                     f"{100 * trial[transfer]:.1f}%", fontsize=10)
    cb = fig.colorbar(im, ax=list(axes), shrink=0.9, pad=0.02)
    cb.set_label("target CDNV (log scale)")
    log_ticks(cb.ax.yaxis, float(vals.min()), float(norm.vmax or vals.max()))
    fig.suptitle("Target CDNV by tap and epoch", fontsize=11)
    return fig


def layer_figures(final: pd.DataFrame, history: pd.DataFrame,
                  transfer: str | None) -> list[tuple[str, str, Figure]]:
    """(stem, caption, figure) of the section's figures the data allow."""
    if transfer is None or transfer not in final or not names.layer_taps(final.columns):
        return []
    made = [("layers_by_depth", "Few-shot NCC accuracy (left) and target CDNV (right) at every "
             "tap of the backbone, input to output, at each trial's final epoch; one line per "
             "trial, coloured by its headline accuracy. A tunnel shows as accuracy falling "
             "towards the output.", depth_figure(final, transfer))]
    heat = heatmap_figure(final, history, transfer)
    if heat is not None:
        made.append(("layers_heatmap", "Target CDNV at every tap (rows) and evaluated epoch "
                     "(columns), for the trial with the highest and the one with the lowest "
                     "headline accuracy; one log colour scale.", heat))
    return made


def layer_view(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the report prints it: one row per (tap, predictor), Spearman and partial
    Spearman with their intervals side by side."""
    rows = []
    for (depth, tap, predictor), g in table.groupby(["depth", "tap", "predictor"], sort=True):
        r = {"tap": tap, "predictor": PREDICTORS[str(predictor)], "depth": depth}
        for method, label in (("spearman", "Spearman"), ("partial_spearman", "partial")):
            e = g[g["method"] == method]
            r[label] = corr.cell(e.iloc[0]) if len(e) else "n/a"
        s = g[g["method"] == "spearman"]
        r["p"] = float(s.p_value.iloc[0]) if len(s) else np.nan
        r["trials"] = int(s.n_trials.iloc[0]) if len(s) else 0
        r["note"] = "; ".join(sorted({str(x) for x in g["reason"] if x}))
        rows.append(r)
    cols = ["tap", "predictor", "Spearman", "partial", "p", "trials", "note"]
    return pd.DataFrame(rows, columns=[*cols, "depth"]).sort_values(
        ["depth", "predictor"], kind="stable")[cols]
