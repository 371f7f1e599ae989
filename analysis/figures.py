"""Figures of a study, saved as PNG and SVG.

Built on `matplotlib.figure.Figure` (Agg canvas) rather than pyplot, so making figures never
switches the caller's backend or leaks global state. Conventions: CDNV on log axes, accuracy in
percent, one colour per value of the hyperparameter that matters most (`color_by`).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from analysis.correlate import CDNV_SPLITS, MIN_BOOT_TRIALS, comparable_cdnv
from analysis.effects import effect_params, effect_targets, log_scaled
from analysis.runs import StudyRuns, describe

DPI = 150
EVALUATOR_NAME = {"fanova": "fANOVA", "ped_anova": "PED-ANOVA"}
SPLIT_TITLE = {"source_train": "source classes, train images",
               "source_test": "source classes, held-out images", "target": "new (target) classes"}


def save_figure(fig: Figure, folder: Path, stem: str) -> dict[str, Path]:
    """Write `stem`.png and `stem`.svg under `folder`; returns {'png': path, 'svg': path}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for ext in ("png", "svg"):
        out[ext] = folder / f"{stem}.{ext}"
        fig.savefig(out[ext], dpi=DPI, bbox_inches="tight")
    return out


@dataclass
class Colours:
    """Maps trials to colours by one hyperparameter (or by trial index) and draws the key."""

    label: str
    colour: dict[int, Any]  # trial_index -> RGBA
    discrete: dict[str, Any] | None = None  # value label -> RGBA, for a legend
    norm: Any = None
    cmap: Any = None

    def key(self, fig: Figure, axes: Any) -> None:
        if self.discrete is not None:
            handles = [Line2D([], [], marker="o", ls="", color=c, label=v)
                       for v, c in self.discrete.items()]
            fig.legend(handles=handles, title=self.label, loc="outside right center",
                       frameon=False)
        else:
            from matplotlib.cm import ScalarMappable

            cb = fig.colorbar(ScalarMappable(norm=self.norm, cmap=self.cmap), ax=axes,
                              shrink=0.9, pad=0.02)
            cb.set_label(self.label)
            if isinstance(self.norm, LogNorm):
                cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def colours(frame: pd.DataFrame, color_by: str | None, log: bool = False) -> Colours:
    """Up to 8 distinct values get a legend; more get a colour bar (log scale if `log`); no
    parameter colours by trial index."""
    idx = frame["trial_index"].to_numpy()
    if color_by is None or color_by not in frame or frame[color_by].isna().all():
        norm = Normalize(idx.min(), max(idx.max(), idx.min() + 1))
        cmap = colormaps["viridis"]
        return Colours("trial index", {i: cmap(norm(i)) for i in idx}, norm=norm, cmap=cmap)
    col = frame[color_by]
    values = sorted(col.dropna().unique(), key=lambda v: (isinstance(v, str), v))
    numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
    if len(values) <= 8:
        cmap = colormaps["viridis" if numeric else "tab10"]
        pos = np.linspace(0.0, 0.9, len(values)) if numeric else np.arange(len(values)) / 10
        by_value = {v: cmap(p) for v, p in zip(values, pos, strict=True)}
        return Colours(color_by, {i: by_value[v] for i, v in zip(idx, col, strict=True)},
                       discrete={f"{v:.3g}" if numeric else str(v): c for v, c in by_value.items()})
    lo, hi = float(min(values)), float(max(values))
    norm = LogNorm(lo, hi) if log and lo > 0 else Normalize(lo, hi)
    cmap = colormaps["viridis"]
    return Colours(color_by, {i: cmap(norm(v)) for i, v in zip(idx, col, strict=True)},
                   norm=norm, cmap=cmap)


def log_axis(ax: Any, which: str = "x") -> None:
    """Log scale with plain labels at 1, 2, 5 x 10^k ('0.05', '0.1', '0.2'): easier to read
    than '5x10^-2', and the minor ticks stay unlabelled so labels never collide."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    lo, hi = (ax.get_xlim() if which == "x" else ax.get_ylim())
    decades = np.log10(hi / max(lo, 1e-300))
    subs = (1.0, 2.0, 3.0, 5.0) if decades < 1.5 else (1.0, 2.0, 5.0) if decades < 3 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=30))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _note(ax: Any, text: str, loc: str = "upper right") -> None:
    xy = {"upper right": (0.98, 0.97, "right", "top"), "upper left": (0.02, 0.97, "left", "top"),
          "lower left": (0.02, 0.03, "left", "bottom")}[loc]
    ax.text(xy[0], xy[1], text, transform=ax.transAxes, ha=xy[2], va=xy[3], fontsize=9,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})


def transfer_vs_cdnv(final: pd.DataFrame, history: pd.DataFrame, transfer: str, c: Colours,
                     rho_text: str = "", seed: int = 0) -> Figure:
    """Left: final epoch, one point per trial, least-squares trend of accuracy on log10 CDNV
    with a 95% bootstrap band. Right: the same plane over training, a line per trial."""
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, sharey=True)
    f = final[np.isfinite(final["cdnv/target"]) & np.isfinite(final[transfer])]
    x, y = f["cdnv/target"].to_numpy(float), 100 * f[transfer].to_numpy(float)
    cols = [c.colour[i] for i in f["trial_index"]]
    ci_col = transfer.replace("/acc", "/ci95")
    if ci_col in f:
        ax.errorbar(x, y, yerr=100 * f[ci_col].to_numpy(float), fmt="none", ecolor="0.6",
                    elinewidth=0.8, zorder=1)
    ax.scatter(x, y, c=cols, s=45, edgecolors="black", linewidths=0.5, zorder=3)
    if len(f) >= MIN_BOOT_TRIALS and np.ptp(np.log10(x)) > 0:  # fewer: a line would overclaim
        lx = np.log10(x)
        grid = np.linspace(lx.min(), lx.max(), 50)
        rng = np.random.default_rng(seed)
        fits = []
        for _ in range(500):
            i = rng.integers(0, len(lx), len(lx))
            if np.ptp(lx[i]) > 0:
                fits.append(np.polyval(np.polyfit(lx[i], y[i], 1), grid))
        slope, icpt = np.polyfit(lx, y, 1)
        ax.plot(10 ** grid, slope * grid + icpt, color="black", lw=1.5,
                label=f"least-squares trend: {slope:+.1f} percentage points per 10× CDNV".replace(
                    "-", "−"))
        lo, hi = np.percentile(fits, [2.5, 97.5], axis=0)
        ax.fill_between(10 ** grid, lo, hi, color="0.5", alpha=0.2, lw=0, label="95% band")
        ax.legend(loc="lower left", fontsize=8, frameon=False)
    log_axis(ax)
    ax.set_xlabel("target CDNV at the final epoch (log scale; lower = more collapse)")
    ax.set_ylabel(f"{describe(transfer)} (%)")
    ax.set_title(f"Final epoch, one point per trial (n = {len(f)})", fontsize=11)
    if rho_text:
        _note(ax, rho_text)
    for idx, h in history.groupby("trial_index"):
        h = h[np.isfinite(h["cdnv/target"]) & np.isfinite(h[transfer])]
        if idx not in c.colour or h.empty:
            continue
        ax2.plot(h["cdnv/target"], 100 * h[transfer], color=c.colour[idx], lw=1, alpha=0.8)
        ax2.scatter(h["cdnv/target"].iloc[-1:], 100 * h[transfer].iloc[-1:], color=c.colour[idx],
                    s=30, edgecolors="black", linewidths=0.5, zorder=3)
        ax2.scatter(h["cdnv/target"].iloc[:1], 100 * h[transfer].iloc[:1], color=c.colour[idx],
                    s=14, marker="s", alpha=0.8)
    log_axis(ax2)
    ax2.set_xlabel("target CDNV (log scale)")
    ax2.set_title("Over training: ■ first evaluated epoch, ● final", fontsize=11)
    ax2.tick_params(labelleft=True)
    for a in (ax, ax2):
        a.grid(True, which="major", alpha=0.3)
    c.key(fig, [ax, ax2])
    return fig


def cdnv_over_epochs(history: pd.DataFrame, c: Colours) -> Figure:
    """CDNV per split against epoch, a line per trial; panels share the log y axis so splits
    compare (unbiased variances when logged: images per class differ between splits)."""
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    variant = ""
    for ax, split in zip(axes, CDNV_SPLITS, strict=True):
        vals, variant = comparable_cdnv(history, split)
        if vals is None:
            ax.set_title(f"{SPLIT_TITLE[split]}: not logged", fontsize=11)
            continue
        for idx, h in history.assign(_v=vals).groupby("trial_index"):
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
    fig.suptitle("CDNV over training, each line a trial; " + (
        f"{variant}: splits not comparable" if "uncorrected" in variant else
        f"{variant}, comparable across splits"), fontsize=11)
    c.key(fig, list(axes))
    return fig


def effect_curves(final: pd.DataFrame, params: list[str], targets: list[str],
                  effects: pd.DataFrame, per_value: pd.DataFrame, c: Colours,
                  log_params: set[str] | frozenset[str] = frozenset()) -> Figure:
    """A panel per (target, param): trials as points; mean and 95% CI per value for params
    with few values; Spearman with its CI in the corner."""
    fig = Figure(figsize=(3.6 * max(1, len(params)) + 1.2, 3.3 * len(targets)),
                 layout="constrained")
    axes = fig.subplots(len(targets), max(1, len(params)), squeeze=False)
    rng = np.random.default_rng(0)
    mean_handle: tuple[list[Any], list[str]] = ([], [])
    for r, t in enumerate(targets):
        log_t = t.startswith(("cdnv", "nc1"))
        scale = 1.0 if log_t else 100.0
        for k, p in enumerate(params):
            ax = axes[r, k]
            col = final[p]
            numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
            pv = per_value[(per_value["param"] == p) & (per_value["target"] == t)]
            if numeric:
                xs = col.to_numpy(float)
            else:
                cats = sorted(col.astype(str).unique())
                xs = np.array([cats.index(v) for v in col.astype(str)], float)
                ax.set_xticks(range(len(cats)), cats)
            # few values: spread the trials sideways a little so overlapping points show
            steps = np.diff(np.unique(xs[np.isfinite(xs)])) if not pv.empty else np.array([])
            jitter = rng.uniform(-0.1, 0.1, len(xs)) * (steps.min() if len(steps) else 0.0)
            ax.scatter(xs + jitter, scale * final[t].to_numpy(float), s=22, alpha=0.8,
                       c=[c.colour[i] for i in final["trial_index"]], edgecolors="none")
            if not pv.empty:
                px = pv["value"].to_numpy(float) if numeric else \
                    np.array([cats.index(str(v)) for v in pv["value"]], float)
                m = scale * pv["mean"].to_numpy(float)
                err = np.abs(np.vstack([m - scale * pv["ci_low"], scale * pv["ci_high"] - m]))
                ax.errorbar(px, m, yerr=np.nan_to_num(err), fmt="D-", color="black", ms=5,
                            lw=1.2, capsize=3, label="mean and 95% CI per value")
                mean_handle = ax.get_legend_handles_labels()
            if numeric and p in log_params:
                log_axis(ax)
            if log_t:
                log_axis(ax, "y")
            e = effects[(effects["param"] == p) & (effects["target"] == t)]
            if len(e) and np.isfinite(e["spearman"].iloc[0]):
                s = e.iloc[0]
                _note(ax, f"ρ = {s.spearman:.2f} [{s.ci_low:.2f}, {s.ci_high:.2f}]".replace(
                          "-", "−"),
                      "upper left")
            ax.set_xlabel(p + (" (log scale)" if ax.get_xscale() == "log" else ""))
            if k == 0:
                ax.set_ylabel(describe(t) + (" (log scale)" if log_t else " (%)"))
            ax.grid(True, alpha=0.3)
    c.key(fig, axes.ravel().tolist())
    if mean_handle[0]:
        fig.legend(*mean_handle, loc="outside lower center", fontsize=9, frameon=False)
    fig.suptitle("Effect of each searched hyperparameter (final epoch, one point per trial)",
                 fontsize=11)
    return fig


def bound_vs_error(table: pd.DataFrame) -> Figure:
    """Observed NCC error against the CDNV bound, a panel per episode shape. Points under the
    diagonal satisfy the bound; right of bound = 1 the bound is vacuous."""
    shapes = list(dict.fromkeys(table["shape"]))
    fig = Figure(figsize=(5.2 * max(1, len(shapes)), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(shapes)), squeeze=False)[0])
    for ax, shape in zip(axes, shapes, strict=False):
        g = table[table["shape"] == shape]
        err = g["error"].clip(lower=1e-3)
        lo = min(float(g["bound"].min()), float(err.min())) / 1.5
        hi = max(float(g["bound"].max()), 1.0) * 1.5
        ax.fill_between([lo, hi], [lo, hi], [lo, lo], color="tab:green", alpha=0.08,
                        label="bound holds (error below it)")
        ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="error = bound")
        ax.axvline(1.0, color="tab:red", ls="--", lw=1, label="bound = 1: vacuous to the right")
        early, fin = g[~g["final"]], g[g["final"]]
        ax.scatter(early["bound"], err[~g["final"]], s=12, color="0.55", alpha=0.6,
                   label="earlier epochs")
        ax.scatter(fin["bound"], err[g["final"]], s=30, color="tab:blue",
                   edgecolors="black", linewidths=0.5, label="final epoch")
        ax.set_xlim(lo, hi)
        ax.set_ylim(min(lo, float(err.min()) / 1.5), 1.2)
        log_axis(ax)
        log_axis(ax, "y")
        clf = describe(f"fewshot/{shape}/{g['classifier'].iloc[0]}/acc").split(" ", 2)[2]
        ax.set_xlabel("CDNV bound on the error (log scale)")
        ax.set_ylabel(f"observed error of {clf.removesuffix(' accuracy')} (log scale)")
        ax.set_title(f"{shape}: bound holds at {100 * g['holds'].mean():.0f}% of {len(g)} "
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
    if c is not None and y and "cdnv/target" in final:
        made.append(("transfer_vs_cdnv", f"{describe(y)} against target CDNV. Left: one point "
                     "per trial at its final epoch (bars: 95% CI over episodes), least-squares "
                     "trend on log CDNV with a bootstrap band. Right: the same trials over "
                     "training.", transfer_vs_cdnv(final, hist, y, c, rho_text, seed)))
    if c is not None and any(f"cdnv/{s}" in hist for s in CDNV_SPLITS):
        made.append(("cdnv_over_epochs", "CDNV of the three splits over training, one line per "
                     "trial, on a shared log axis.", cdnv_over_epochs(hist, c)))
    if c is not None and params and targets:
        made.append(("effects", "Each searched hyperparameter against target CDNV and few-shot "
                     "accuracy at the final epoch; diamonds: mean and 95% CI per value.",
                     effect_curves(final, params, targets, t["effects"], t["per_value"], c,
                                   logs)))
    if len(t["bound"]):
        made.append(("bound_vs_error", "Observed NCC error against the CDNV bound at every "
                     "evaluated (trial, epoch); below the diagonal the bound holds, right of "
                     "the dashed line it is vacuous.", bound_vs_error(t["bound"])))
    if t["importances"]["param"].notna().any():
        made.append(("importances", "Optuna parameter importances for target CDNV and for "
                     "few-shot accuracy.", importance_bars(t["importances"])))
    out = []
    for stem, caption, fig in made:
        paths = save_figure(fig, folder, stem)
        out.append({"stem": stem, "caption": caption, "png": f"figures/{stem}.png",
                    "svg": f"figures/{stem}.svg",
                    "data": base64.b64encode(paths["png"].read_bytes()).decode()})
    return out
