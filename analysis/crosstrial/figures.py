"""Figures of a study, saved as PNG and SVG.

Conventions: CDNV on log axes, accuracy in percent, one colour per value of the hyperparameter
that matters most (`color_by`). The drawing helpers they share live in
`analysis.crosstrial.plotting`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from analysis.contract import CDNV_TARGET, collapse_key, fewshot_key
from analysis.crosstrial import dense_figures as dense
from analysis.crosstrial.bound_check import BOUNDS
from analysis.crosstrial.correlate import CDNV_SPLITS, MIN_BOOT_TRIALS
from analysis.crosstrial.effects import effect_params, effect_targets, is_log_target, log_scaled
from analysis.crosstrial.layers import layer_figures
from analysis.crosstrial.leaderboard_figure import forest_plot
from analysis.crosstrial.plotting import (
    Colours,
    colours,
    final_epoch_panel,
    log_axis,
    note,
    report_figure,
    tick_label,
    trend,
)
from analysis.crosstrial.runs import StudyRuns, describe
from analysis.crosstrial.trends import comparable_cdnv

EVALUATOR_NAME = {"fanova": "fANOVA", "ped_anova": "PED-ANOVA"}
SPLIT_TITLE = {"source_train": "source classes, train images",
               "source_test": "source classes, held-out images", "target": "new (target) classes"}


def transfer_vs_cdnv(final: pd.DataFrame, history: pd.DataFrame, transfer: str, c: Colours,
                     rho_text: str = "", seed: int = 0) -> Figure:
    """Left: final epoch, one point per trial, least-squares trend of accuracy on log10 CDNV
    with a 95% bootstrap band. Right: the same plane over training, a line per trial."""
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, sharey=True)
    f = final[np.isfinite(final[CDNV_TARGET]) & np.isfinite(final[transfer])]
    x, y = f[CDNV_TARGET].to_numpy(float), 100 * f[transfer].to_numpy(float)
    cols = [c.colour[i] for i in f["trial_index"]]
    ci_col = transfer.replace("/acc", "/ci95")
    if ci_col in f:
        ax.errorbar(x, y, yerr=100 * f[ci_col].to_numpy(float), fmt="none", ecolor="0.6",
                    elinewidth=0.8, zorder=1)
    ax.scatter(x, y, c=cols, s=45, edgecolors="black", linewidths=0.5, zorder=3)
    final_epoch_panel(ax, x, y, describe(transfer),
                      f"Final epoch, one point per trial (n = {len(f)})", rho_text, seed)
    for idx, h in history.groupby("trial_index"):
        h = h[np.isfinite(h[CDNV_TARGET]) & np.isfinite(h[transfer])]
        if idx not in c.colour or h.empty:
            continue
        ax2.plot(h[CDNV_TARGET], 100 * h[transfer], color=c.colour[idx], lw=1, alpha=0.8)
        ax2.scatter(h[CDNV_TARGET].iloc[-1:], 100 * h[transfer].iloc[-1:], color=c.colour[idx],
                    s=30, edgecolors="black", linewidths=0.5, zorder=3)
        ax2.scatter(h[CDNV_TARGET].iloc[:1], 100 * h[transfer].iloc[:1], color=c.colour[idx],
                    s=14, marker="s", alpha=0.8)
    log_axis(ax2)
    ax2.set_xlabel("target CDNV (log scale)")
    ax2.set_title("Over training: ■ first evaluated epoch, ● final", fontsize=11)
    ax2.tick_params(labelleft=True)
    for a in (ax, ax2):
        a.grid(True, which="major", alpha=0.3)
    c.key(fig, [ax, ax2])
    return fig


def cdnv_over_epochs(history: pd.DataFrame, c: Colours, final: pd.DataFrame | None = None,
                     transfer: str | None = None) -> Figure:
    """CDNV per split against epoch, a line per trial; panels share the log y axis so splits
    compare (unbiased variances when logged: images per class differ between splits). Given
    `final` with more than `dense.DENSE_TRIALS` trials: per epoch the median over trials with
    25-75% and 5-95% bands instead, and the best and worst trials by final `transfer` named."""
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    many = final is not None and dense.is_dense(len(final))
    named = dense.extremes(final, transfer) if many and final is not None else {}
    variant = ""
    for ax, split in zip(axes, CDNV_SPLITS, strict=True):
        vals, variant = comparable_cdnv(history, split)
        if vals is None:
            ax.set_title(f"{SPLIT_TITLE[split]}: not logged", fontsize=11)
            continue
        if many:
            table = dense.wide(history, np.where(np.isfinite(vals) & (vals > 0), vals, np.nan))
            dense.bands(ax, table.index.to_numpy(float), table.to_numpy(float),
                        label=f"{table.shape[1]} trials")
            dense.named_lines(ax, table, named)
        for idx, h in ([] if many else history.assign(_v=vals).groupby("trial_index")):
            h = h[np.isfinite(h["_v"]) & (h["_v"] > 0)]
            if idx in c.colour and len(h):
                ax.plot(h["epoch"], h["_v"], color=c.colour[idx], lw=1.1, alpha=0.85,
                        marker="o" if len(h) < 12 else None, ms=2.5)
        log_axis(ax, "y")
        ax.set_title(SPLIT_TITLE[split], fontsize=11)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="major", alpha=0.3)
        ax.tick_params(labelleft=True)
    axes[0].set_ylabel("CDNV (log scale)")
    fig.suptitle(("CDNV over training: median and quantile bands over trials; " if many else
                  "CDNV over training, each line a trial; ") + (
        f"{variant}: splits not comparable" if "uncorrected" in variant else
        f"{variant}, comparable across splits"), fontsize=11)
    if many:
        axes[0].legend(loc="lower left", fontsize=8, frameon=False)
        dense.named_legend(fig, dense.NAMED, "final " + describe(transfer or ""))
    else:
        c.key(fig, list(axes))
    return fig


def effect_curves(final: pd.DataFrame, params: list[str], targets: list[str],
                  effects: pd.DataFrame, per_value: pd.DataFrame, c: Colours,
                  space: dict[str, dict[str, Any]] | None = None, seed: int = 0) -> Figure:
    """A row per hyperparameter, a column per target: trials as points; for params in
    `per_value` (few values) the mean and 95% CI per value, for the rest a least-squares trend
    with a bootstrap band; Spearman with its CI (or Kruskal-Wallis p) above each panel.
    `space` (the study's space.json) says which params were log-scaled and which categorical:
    these sit at evenly spaced positions, one per value."""
    space = space or {}
    log_params = {p for p in params if log_scaled(final[p], space.get(p))}
    categorical = {p for p in params if (space.get(p) or {}).get("type") == "categorical"
                   or not pd.api.types.is_numeric_dtype(final[p])}
    rows, cols = max(1, len(params)), max(1, len(targets))
    fig = Figure(figsize=(4.2 * cols + 1.8, 2.6 * rows + 1.0), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    handles: dict[str, Any] = {}
    for r, p in enumerate(params):
        for k, t in enumerate(targets):
            ax = axes[r, k]
            pv = per_value[(per_value["param"] == p) & (per_value["target"] == t)]
            e = effects[(effects["param"] == p) & (effects["target"] == t)]
            _effect_panel(ax, final, p, t, pv, c, log_x=p in log_params,
                          categorical=p in categorical, seed=seed + 7 * r + k)
            ax.set_title(_effect_title(e), fontsize=9, loc="left")
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(lab, h)
    c.key(fig, axes.ravel().tolist(), shrink=min(0.9, 4.0 / (2.6 * rows + 1.0)))
    handles = {"trial (colour: " + c.label + ")": Line2D(
        [], [], marker="o", ls="", color="0.45", markeredgecolor="black", markeredgewidth=0.4),
        **handles}
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", fontsize=9,
               frameon=False, ncol=min(len(handles), 2))
    fig.suptitle("Effect of each searched hyperparameter at the final epoch (one point per "
                 "trial)", fontsize=11)
    return fig


def _effect_title(e: pd.DataFrame) -> str:
    if not len(e):
        return ""
    s = e.iloc[0]
    if np.isfinite(s.spearman):
        ci = f" [{s.ci_low:.2f}, {s.ci_high:.2f}]" if np.isfinite(s.ci_low) else " (no CI)"
        return f"Spearman ρ = {s.spearman:.2f}{ci}".replace("-", "−")
    if s.kind == "categorical" and np.isfinite(s.p_value):
        return f"Kruskal–Wallis p = {s.p_value:.2g}"
    return f"ρ not computed: {s.reason}" if s.reason else ""


def _effect_panel(ax: Any, final: pd.DataFrame, p: str, t: str, pv: pd.DataFrame, c: Colours,
                  *, log_x: bool, categorical: bool, seed: int) -> None:
    """One (param, target) panel; see `effect_curves`."""
    col, log_y = final[p], is_log_target(t)
    scale = 1.0 if log_y else 100.0
    y = scale * final[t].to_numpy(float)
    clip = None if log_y else (0.0, 100.0)  # accuracies: an interval past 100% means nothing
    cats = sorted(col.dropna().unique(), key=lambda v: (isinstance(v, str), v))
    pos = {v: float(i) for i, v in enumerate(cats)}
    as_cats = categorical or not pd.api.types.is_numeric_dtype(col)
    log_x = log_x and not as_cats
    xs = col.map(pos).to_numpy(float) if as_cats else col.to_numpy(float)
    clipped = False
    many = dense.is_dense(len(final))  # small translucent points: overlaps show density
    if pv.empty:  # a value per trial: points and a trend over them
        ax.scatter(xs, y, s=6 if many else 28, c=[c.colour[i] for i in final["trial_index"]],
                   edgecolors="none" if many else "black", linewidths=0.4,
                   alpha=0.6 if many else 1.0, zorder=3, gid="trials", rasterized=many)
        fit = trend(ax, xs, y, log_x=log_x, log_y=log_y, seed=seed, clip=clip,
                    label="least-squares trend (on the axes' scales)")
        clipped = bool(fit and fit[1])
    else:  # few values: spread each value's trials sideways a little so overlaps show
        u = np.log10(xs) if log_x else xs
        steps = np.diff(np.unique(u[np.isfinite(u)]))
        u = u + np.random.default_rng(seed).uniform(-0.12, 0.12, len(u)) * (
            steps.min() if len(steps) else 0.0)
        ax.scatter(10 ** u if log_x else u, y, s=5 if many else 22, alpha=0.5 if many else 0.85,
                   zorder=2, c=[c.colour[i] for i in final["trial_index"]], edgecolors="none",
                   gid="trials", rasterized=many)
        px = pv["value"].map(pos).to_numpy(float) if as_cats else pv["value"].to_numpy(float)
        m, lo, hi = (scale * pv[k].to_numpy(float) for k in ("mean", "ci_low", "ci_high"))
        if clip is not None:
            clipped = bool(((lo < clip[0]) | (hi > clip[1])).any())
            lo, hi = np.clip(lo, *clip), np.clip(hi, *clip)
        err = np.nan_to_num(np.abs(np.vstack([m - lo, hi - m])))  # one trial: no bar
        ordered = pd.api.types.is_numeric_dtype(col)  # a line through means only if ordered
        ax.errorbar(px, m, yerr=err, fmt="D-" if ordered else "D", color="black", ms=5,
                    lw=1.0, capsize=3, zorder=4, gid="per_value",
                    label="mean and 95% CI per value (t interval over its trials)")
    if as_cats:
        ax.set_xticks(range(len(cats)), [tick_label(v) if isinstance(v, float) else str(v)
                                         for v in cats])
        ax.set_xlim(-0.5, len(cats) - 0.5)
    elif log_x:
        log_axis(ax)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=pd.api.types.is_integer_dtype(col)))
    if log_y:
        log_axis(ax, "y", max_labels=5)
    if clipped:
        note(ax, "interval clipped to 0–100%", "lower right")
    ax.set_xlabel(p + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel(describe(t) + (" (log scale)" if log_y else " (%)"), fontsize=9)
    ax.grid(True, which="major", alpha=0.3)


BOUND_TITLES = {b.name: b.title for b in BOUNDS}


def bound_vs_error(table: pd.DataFrame) -> Figure:
    """Observed NCC error against each bound (CDNV, Cantelli), a panel per bound and episode
    shape. Points under the diagonal satisfy the bound; right of bound = 1 it is vacuous."""
    panels = list(dict.fromkeys(zip(table["bound_name"], table["shape"], strict=True)))
    fig = Figure(figsize=(5.2 * max(1, len(panels)), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(panels)), squeeze=False)[0])
    for ax, (bound_name, shape) in zip(axes, panels, strict=False):
        g = table[(table["shape"] == shape) & (table["bound_name"] == bound_name)]
        err = g["error"].clip(lower=1e-3)
        lo = min(float(g["bound"].min()), float(err.min())) / 1.5
        hi = max(float(g["bound"].max()), 1.0) * 1.5
        ax.fill_between([lo, hi], [lo, hi], [lo, lo], color="tab:green", alpha=0.08,
                        label="bound holds (error below it)")
        ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="error = bound")
        ax.axvline(1.0, color="tab:red", ls="--", lw=1, label="bound = 1: vacuous to the right")
        early, fin = g[~g["final"]], g[g["final"]]
        many = dense.is_dense(len(fin))
        # many points: small, translucent, and pixels in the SVG (40,000 vector dots: 13 MB)
        ax.scatter(early["bound"], err[~g["final"]], s=3 if many else 12, color="0.55",
                   alpha=0.25 if many else 0.6, label="earlier epochs", edgecolors="none",
                   rasterized=many)
        ax.scatter(fin["bound"], err[g["final"]], s=8 if many else 30, color="tab:blue",
                   edgecolors="none" if many else "black", linewidths=0.5,
                   alpha=0.7 if many else 1.0, label="final epoch", rasterized=many)
        ax.set_xlim(lo, hi)
        ax.set_ylim(min(lo, float(err.min()) / 1.5), 1.2)
        log_axis(ax)
        log_axis(ax, "y")
        clf = describe(fewshot_key(shape, g["classifier"].iloc[0])).split(" ", 2)[2]
        ax.set_xlabel(f"{BOUND_TITLES.get(bound_name, bound_name)} on the error (log scale)")
        ax.set_ylabel(f"observed error of {clf.removesuffix(' accuracy')} (log scale)")
        ax.set_title(f"{shape}, {bound_name}: holds at {100 * g['holds'].mean():.0f}% of {len(g)} "
                     f"points; non-vacuous at {100 * (1 - g['vacuous'].mean()):.0f}%",
                     fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9,
               frameon=False)
    return fig


def importance_bars(imp: pd.DataFrame) -> Figure:
    """Horizontal bars per parameter, one panel per target, fANOVA and PED-ANOVA side by side."""
    ok = imp.dropna(subset=["param"])
    targets = list(dict.fromkeys(ok["target"]))
    fig = Figure(figsize=(5.5 * max(1, len(targets)), 0.5 * ok["param"].nunique() + 2.0),
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(targets)), squeeze=False)[0])
    evaluators = list(dict.fromkeys(ok["evaluator"]))
    height = 0.8 / max(1, len(evaluators))
    for ax, t in zip(axes, targets, strict=False):
        g = ok[ok["target"] == t]
        order = g.groupby("param")["importance"].mean().sort_values().index.tolist()
        for j, ev in enumerate(evaluators):  # the first evaluator's bar on top, as in the legend
            e = g[g["evaluator"] == ev].set_index("param").reindex(order)
            ax.barh(np.arange(len(order)) + ((len(evaluators) - 1) / 2 - j) * height,
                    e["importance"].fillna(0), height=height, label=EVALUATOR_NAME.get(ev, ev),
                    color=["tab:blue", "tab:orange", "tab:green"][j % 3])
        ax.set_yticks(range(len(order)), order)
        ax.set_xlim(0, 1)
        ax.set_xlabel("normalized importance (sums to 1 per method)")
        ax.set_title(describe(t), fontsize=11)
        ax.grid(True, axis="x", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9,
               frameon=False)
    fig.suptitle("Which hyperparameter matters (Optuna importances over the usable trials)",
                 fontsize=11)
    return fig


def study_figures(study: StudyRuns, t: dict[str, Any], folder: Path, *, color_by: str | None,
                  rho_text: str = "", seed: int = 0) -> list[dict[str, Any]]:
    """Every figure the data allow, saved under `folder`; for each: stem, caption, relative
    PNG / SVG paths and the PNG as base64 (for embedding)."""
    final, hist, y = study.usable, study.usable_history, t["transfer"]
    params, targets = effect_params(study), effect_targets(study)
    logs = {p for p in params if log_scaled(final[p], study.space.get(p))}
    c = colours(final, color_by, log=color_by in logs) if len(final) else None
    made: list[tuple[str, str, Figure]] = []
    many = dense.is_dense(len(final))
    if c is not None and y and CDNV_TARGET in final and many:
        made.append(("transfer_vs_cdnv", f"{describe(y)} against target CDNV, {len(final)} "
                     "trials as 2-D histograms (grey: trials per bin). Left: final epoch, "
                     "least-squares trend on log CDNV with a bootstrap band. Right: every "
                     f"evaluated epoch. The {dense.NAMED} best and {dense.NAMED} worst trials by "
                     "final accuracy are named (right: their paths).",
                     dense.transfer_vs_cdnv_dense(final, hist, y, rho_text, seed)))
    elif c is not None and y and CDNV_TARGET in final:
        made.append(("transfer_vs_cdnv", f"{describe(y)} against target CDNV. Left: one point "
                     "per trial at its final epoch (bars: 95% CI over episodes), least-squares "
                     "trend on log CDNV with a bootstrap band. Right: the same trials over "
                     "training.", transfer_vs_cdnv(final, hist, y, c, rho_text, seed)))
    has_cdnv = any(collapse_key("cdnv", s) in hist for s in CDNV_SPLITS)
    if c is not None and has_cdnv and many:
        made.append(("cdnv_over_epochs", "CDNV of the three splits over training on a shared "
                     f"log axis: median over the {len(final)} trials per epoch with 25–75% and "
                     f"5–95% bands; the {dense.NAMED} best and worst trials by final accuracy as "
                     "named lines.", cdnv_over_epochs(hist, c, final, y)))
    elif c is not None and has_cdnv:
        made.append(("cdnv_over_epochs", "CDNV of the three splits over training, one line per "
                     "trial, on a shared log axis.", cdnv_over_epochs(hist, c)))
    if c is not None and params and targets:
        made.append(("effects", "Each searched hyperparameter against target CDNV and few-shot "
                     "accuracy at the final epoch, one row per hyperparameter. Parameters with "
                     "few values (grid, categorical, repeated ints): diamonds give the mean and "
                     "95% CI per value. Parameters sampled from a range: a least-squares trend "
                     f"on the axes' scales, with a bootstrap band (from {MIN_BOOT_TRIALS} trials "
                     "on). Above each panel: Spearman ρ with its 95% CI.",
                     effect_curves(final, params, targets, t["effects"], t["per_value"], c,
                                   study.space, seed)))
    if len(t["bound"]):
        made.append(("bound_vs_error", "Observed NCC error against each bound at every "
                     "evaluated (trial, epoch); below the diagonal the bound holds, right of "
                     "the dashed line it is vacuous.", bound_vs_error(t["bound"])))
    if y and len(t.get("leaderboard", [])):
        made.append(("leaderboard", "Every candidate predictor against "
                     f"{describe(y)} across trials at their final epoch, sorted by weighted "
                     "Kendall τ_w; bars: 95% bootstrap intervals over trials; the dashed line "
                     "is source test accuracy, the baseline to beat.",
                     forest_plot(t["leaderboard"], y)))
    if t["importances"]["param"].notna().any():
        made.append(("importances", "Optuna parameter importances for target CDNV and for "
                     "few-shot accuracy.", importance_bars(t["importances"])))
    made += layer_figures(final, hist, y)
    return [report_figure(fig, folder, stem, caption) for stem, caption, fig in made]
