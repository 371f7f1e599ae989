"""Drawing conventions shared by the study's figures: colours per hyperparameter value, log axes
whose labels never collide, least-squares trends with bootstrap bands, notes, PNG + SVG output.

Figures are built on `matplotlib.figure.Figure` (Agg canvas) rather than pyplot, so making them
never switches the caller's backend or leaks global state.
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
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis.crosstrial.correlate import MIN_BOOT_TRIALS

DPI = 150
LOG_STEPS = [tuple(float(m) for m in range(1, 10)), (1.0, 2.0, 3.0, 5.0), (1.0, 2.0, 5.0),
             (1.0, 3.0), (1.0,)]


def save_figure(fig: Figure, folder: Path, stem: str) -> dict[str, Path]:
    """Write `stem`.png and `stem`.svg under `folder`; returns {'png': path, 'svg': path}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for ext in ("png", "svg"):
        out[ext] = folder / f"{stem}.{ext}"
        fig.savefig(out[ext], dpi=DPI, bbox_inches="tight")
    return out


def report_figure(fig: Figure, folder: Path, stem: str, caption: str) -> dict[str, str]:
    """Save `fig` (PNG + SVG) and return the report templates' entry for it: stem, caption,
    relative paths and the PNG inlined as base64 (reports are self-contained)."""
    paths = save_figure(fig, folder, stem)
    return {"stem": stem, "caption": caption, "png": f"figures/{stem}.png",
            "svg": f"figures/{stem}.svg",
            "data": base64.b64encode(paths["png"].read_bytes()).decode()}


@dataclass
class Colours:
    """Maps trials to colours by one hyperparameter (or by trial index) and draws the key."""

    label: str
    colour: dict[int, Any]  # trial_index -> RGBA
    discrete: dict[str, Any] | None = None  # value label -> RGBA, for a legend
    norm: Any = None
    cmap: Any = None

    def key(self, fig: Figure, axes: Any, shrink: float = 0.9) -> None:
        """Draw the colour key: a legend for discrete values, a colour bar for a continuous
        parameter."""
        if self.discrete is not None:
            handles = [Line2D([], [], marker="o", ls="", color=c, label=v)
                       for v, c in self.discrete.items()]
            fig.legend(handles=handles, title=self.label, loc="outside right center",
                       frameon=False)
        else:
            from matplotlib.cm import ScalarMappable

            cb = fig.colorbar(ScalarMappable(norm=self.norm, cmap=self.cmap), ax=axes,
                              shrink=shrink, pad=0.02)
            cb.set_label(self.label)
            if isinstance(self.norm, LogNorm):
                log_ticks(cb.ax.yaxis, self.norm.vmin or 0.0, self.norm.vmax or 1.0)


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


def log_axis(ax: Any, which: str = "x", max_labels: int = 6) -> None:
    """Log scale with at most about `max_labels` labels at 1, 2, 3, 5 x 10^k (as many of these
    steps as fit), written plainly ('0.05', '0.2') or, for axes reaching below 0.001,
    compactly ('3e−5', '1e−3'); minor ticks stay unlabelled so labels never collide."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
    log_ticks(ax.xaxis if which == "x" else ax.yaxis, lo, hi, max_labels)


def log_ticks(axis: Any, lo: float, hi: float, max_labels: int = 6) -> None:
    """The ticks of `log_axis` on an axis already log-scaled (a colour bar's, too)."""
    lo = max(lo, 1e-300)
    exps = np.arange(np.floor(np.log10(lo)), np.ceil(np.log10(hi)) + 1)
    # the densest steps that still give at most max_labels labels inside the view
    subs = next((s for s in LOG_STEPS if sum(lo <= m * 10 ** e <= hi for m in s for e in exps)
                 <= max_labels), (1.0,))
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=max_labels))
    sci = lo < 1e-3 or hi >= 1e5  # then every label compact, not '3e−4' next to '0.001'
    axis.set_major_formatter(FuncFormatter(lambda v, _: tick_label(v, sci)))
    axis.set_minor_formatter(NullFormatter())


def tick_label(v: float, sci: bool = False) -> str:
    """'0.05', '200'; '3e−5' below 0.001, from 10^5 on, or for any v if `sci` (shorter than
    '3e-05' or '0.00003')."""
    if v == 0 or (not sci and 1e-3 <= abs(v) < 1e5):
        return f"{v:g}".replace("-", "−")
    mant, exp = f"{v:.0e}".split("e")
    return f"{mant}e{int(exp)}".replace("-", "−")


def trend(ax: Any, x: np.ndarray, y: np.ndarray, *, log_x: bool, log_y: bool = False,
          seed: int = 0, clip: tuple[float, float] | None = None, label: str = "",
          n_boot: int = 500) -> tuple[float, bool] | None:
    """Least-squares line of y on x, each on the scale its axis uses (log10 where log), with a
    95% bootstrap band over points; drawn only from MIN_BOOT_TRIALS points on (fewer: a line
    would overclaim). Returns (slope in axis units, whether `clip` cut the band) or None."""
    ok = np.isfinite(x) & np.isfinite(y) & ((x > 0) if log_x else True) & ((y > 0) if log_y
                                                                          else True)
    u = np.log10(x[ok]) if log_x else x[ok]
    v = np.log10(y[ok]) if log_y else y[ok]
    if len(u) < MIN_BOOT_TRIALS or np.ptp(u) == 0:
        return None
    grid = np.linspace(u.min(), u.max(), 50)
    slope, icpt = np.polyfit(u, v, 1)
    i = np.random.default_rng(seed).integers(0, len(u), (n_boot, len(u)))
    uu, vv = u[i] - u[i].mean(1, keepdims=True), v[i] - v[i].mean(1, keepdims=True)
    sxx = (uu ** 2).sum(1)
    keep = sxx > 0  # a resample of one repeated x has no slope
    b = (uu * vv).sum(1)[keep] / sxx[keep]
    fits = b[:, None] * (grid - u[i][keep].mean(1, keepdims=True)) + v[i][keep].mean(
        1, keepdims=True)
    lo, hi = np.percentile(fits, [2.5, 97.5], axis=0)
    line = slope * grid + icpt
    gx = 10 ** grid if log_x else grid
    line, lo, hi = (10 ** a if log_y else a for a in (line, lo, hi))
    cut = False
    if clip is not None:
        cut = bool((lo < clip[0]).any() or (hi > clip[1]).any())
        line, lo, hi = (np.clip(a, *clip) for a in (line, lo, hi))
    ax.plot(gx, line, color="black", lw=1.5, label=label or "least-squares trend", gid="trend")
    ax.fill_between(gx, lo, hi, color="0.5", alpha=0.2, lw=0, gid="band",
                    label="95% bootstrap band" + (f" (clipped to {clip[0]:g}–{clip[1]:g})"
                                                  if cut and clip else ""))
    return float(slope), cut


def note(ax: Any, text: str, loc: str = "upper right") -> None:
    """A small boxed text in a corner of the axes (sample sizes, caveats)."""
    xy = {"upper right": (0.98, 0.97, "right", "top"), "upper left": (0.02, 0.97, "left", "top"),
          "lower left": (0.02, 0.03, "left", "bottom"),
          "lower right": (0.98, 0.03, "right", "bottom")}[loc]
    ax.text(xy[0], xy[1], text, transform=ax.transAxes, ha=xy[2], va=xy[3], fontsize=9,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})


def final_epoch_panel(ax: Any, x: np.ndarray, y: np.ndarray, y_label: str, title: str,
                      rho_text: str = "", seed: int = 0) -> None:
    """The final-epoch panel's trend (accuracy in % on log10 target CDNV, with its bootstrap
    band and slope in the legend), axes, labels and the correlation note; the caller has drawn
    the trials (points or bins)."""
    fit = trend(ax, x, y, log_x=True, seed=seed)
    if fit is not None:
        slope = f"{fit[0]:+.1f}".replace("-", "−")
        next(ln for ln in ax.lines if ln.get_gid() == "trend").set_label(
            f"least-squares trend: {slope} percentage points per 10× CDNV")
        ax.legend(loc="lower left", fontsize=8, frameon=False)
    log_axis(ax)
    ax.set_xlabel("target CDNV at the final epoch (log scale; lower = more collapse)")
    ax.set_ylabel(f"{y_label} (%)")
    ax.set_title(title, fontsize=11)
    if rho_text:
        note(ax, rho_text)
