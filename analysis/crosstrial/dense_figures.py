"""Figures for studies too large for a line or a point per trial.

Above `DENSE_TRIALS` usable trials a line per trial is a smear, so the study's figures switch to
views whose ink does not grow with the trial count:
    scatter of trials          a 2-D histogram (hexagonal bins, log x where the axis is log,
                               colour = trials per bin), the least-squares trend over it;
    per-epoch curves           the median over trials per epoch with the 25-75% and 5-95%
                               quantile bands;
    per-depth curves           the same bands per tap;
and in every one the `NAMED` best and `NAMED` worst trials by the headline accuracy are drawn
on top as their own lines or points, labelled by their run names' index (`t042`), so the
extremes stay findable in MLflow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

DENSE_TRIALS = 100  # more usable trials than this: density views
NAMED = 3  # best and worst trials named in a dense view
BEST, WORST = "tab:red", "tab:blue"


def is_dense(n_trials: int) -> bool:
    """True when a study has too many trials for a line or point per trial."""
    return n_trials > DENSE_TRIALS


def extremes(final: pd.DataFrame, by: str | None, k: int = NAMED) -> dict[int, str]:
    """{trial_index: 'best' | 'worst'} for the `k` highest and `k` lowest trials on `by`."""
    if not by or by not in final:
        return {}
    ranked = final[np.isfinite(final[by].to_numpy(float))].sort_values(by, kind="stable")
    k = min(k, len(ranked) // 2)
    out = {int(i): "worst" for i in ranked["trial_index"].iloc[:k]}
    out.update({int(i): "best" for i in ranked["trial_index"].iloc[len(ranked) - k:]})
    return out


def name(index: int) -> str:
    """The trial's label, as its MLflow run name begins: t007."""
    return f"t{index:03d}"


def density(ax: Any, x: np.ndarray, y: np.ndarray, *, log_x: bool = False,
            log_y: bool = False) -> Any:
    """A hexagonal 2-D histogram of (x, y) (log-scaled bins on log axes), about 1.2 sqrt(n)
    bins across (15 to 50); returns the artist for a colour bar. Non-finite points (and
    non-positive ones on log axes) are left out."""
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0 if log_x else True) & (y > 0 if log_y else True)
    grid = int(np.clip(1.2 * np.sqrt(ok.sum()), 15, 50))
    return ax.hexbin(x[ok], y[ok], gridsize=grid, mincnt=1, cmap="Greys",
                     xscale="log" if log_x else "linear", yscale="log" if log_y else "linear",
                     norm=LogNorm(vmin=1), linewidths=0.2, edgecolors="0.85", zorder=1)


def count_bar(fig: Figure, art: Any, ax: Any, label: str) -> None:
    """A colour bar for a `density` artist, its counts written plainly (1, 2, 5, 10, ...)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    cb = fig.colorbar(art, ax=ax, pad=0.01, shrink=0.9)
    cb.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    cb.ax.yaxis.set_minor_formatter(NullFormatter())
    cb.set_label(label)


def _offset(rank: int) -> tuple[int, int]:
    """Label offsets that fan out, so the names of neighbouring named trials do not overlap."""
    return (4, 3 - 9 * rank)


def mark(ax: Any, x: np.ndarray, y: np.ndarray, indices: np.ndarray,
         named: dict[int, str]) -> None:
    """Draw and label the named trials among points (x, y) of trials `indices`."""
    ranks = {i: r for r, i in enumerate(sorted(named, key=lambda i: (named[i], i)))}
    for xi, yi, idx in zip(x, y, indices, strict=True):
        kind = named.get(int(idx))
        if kind is None or not (np.isfinite(xi) and np.isfinite(yi)):
            continue
        colour = BEST if kind == "best" else WORST
        ax.scatter([xi], [yi], s=40, color=colour, edgecolors="black", linewidths=0.6, zorder=5)
        ax.annotate(name(int(idx)), (xi, yi), xytext=_offset(ranks[int(idx)] % NAMED),
                    textcoords="offset points", fontsize=7, color=colour, zorder=6)


def named_legend(fig: Figure, k: int, what: str) -> None:
    """The key of the named trials and the grey bins, under the figure."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color="0.45", label="trials per bin / quantile bands over all trials"),
               Line2D([], [], color=BEST, marker="o", label=f"{k} best by {what}"),
               Line2D([], [], color=WORST, marker="o", label=f"{k} worst by {what}")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9, frameon=False)


def bands(ax: Any, x: np.ndarray, values: np.ndarray, colour: str = "0.3",
          label: str = "trials") -> None:
    """Median and 25-75% / 5-95% quantile bands of `values` (rows = x positions, columns =
    trials; NaN = not logged) against `x`; positions where no trial has a value are left out."""
    ok = np.isfinite(values).any(axis=1)
    if not ok.any():
        return
    v = values[ok]
    q = np.nanquantile(v, [0.05, 0.25, 0.5, 0.75, 0.95], axis=1)
    xs = np.asarray(x)[ok]
    ax.fill_between(xs, q[0], q[4], color=colour, alpha=0.15, lw=0,
                    label=f"5–95% of {label}")
    ax.fill_between(xs, q[1], q[3], color=colour, alpha=0.3, lw=0, label=f"25–75% of {label}")
    ax.plot(xs, q[2], color=colour, lw=1.8, label=f"median of {label}")


def wide(history: pd.DataFrame, column: str | np.ndarray, x: str = "epoch") -> pd.DataFrame:
    """(x by trial) table of one metric from the long history (NaN where not logged)."""
    h = history.assign(_v=column) if not isinstance(column, str) else history.assign(
        _v=history[column])
    return h.pivot_table(index=x, columns="trial_index", values="_v", aggfunc="last")


def named_lines(ax: Any, table: pd.DataFrame, named: dict[int, str], *,
                scale: float = 1.0, x: Any = None) -> None:
    """The named trials' own lines over a (x by trial) table, labelled at their last point;
    within best and within worst the labels are stacked in the order of those end points."""
    xs = table.index.to_numpy(float) if x is None else np.asarray(x)
    ends: list[tuple[str, float, int, np.ndarray, np.ndarray]] = []
    for idx, kind in named.items():
        if idx not in table.columns:
            continue
        v = scale * table[idx].to_numpy(float)
        ok = np.isfinite(v)
        if ok.any():
            ends.append((kind, float(v[ok][-1]), idx, xs[ok], v[ok]))
    for kind in ("best", "worst"):
        group = sorted((e for e in ends if e[0] == kind), key=lambda e: -e[1])
        colour = BEST if kind == "best" else WORST
        for rank, (_, _, idx, gx, gv) in enumerate(group):
            ax.plot(gx, gv, color=colour, lw=1.1, alpha=0.9, zorder=4)
            ax.annotate(name(idx), (gx[-1], gv[-1]), xytext=(3, 9 * ((len(group) - 1) / 2 - rank)),
                        textcoords="offset points", fontsize=7, color=colour, va="center",
                        zorder=6)


def transfer_vs_cdnv_dense(final: pd.DataFrame, history: pd.DataFrame, transfer: str,
                           rho_text: str = "", seed: int = 0) -> Figure:
    """`figures.transfer_vs_cdnv` for many trials. Left: final epoch as a 2-D histogram with
    the least-squares trend on log CDNV. Right: every evaluated (trial, epoch) as a 2-D
    histogram. Both: the named best and worst trials on top (right: their paths)."""
    from analysis.contract import CDNV_TARGET
    from analysis.crosstrial.plotting import final_epoch_panel, log_axis
    from analysis.crosstrial.runs import describe

    fig = Figure(figsize=(12, 5.0), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, sharey=True)
    named = extremes(final, transfer)
    f = final[np.isfinite(final[CDNV_TARGET]) & np.isfinite(final[transfer])]
    x, y = f[CDNV_TARGET].to_numpy(float), 100 * f[transfer].to_numpy(float)
    art = density(ax, x, y, log_x=True)
    mark(ax, x, y, f["trial_index"].to_numpy(), named)
    final_epoch_panel(ax, x, y, describe(transfer), f"Final epoch, trials per bin (n = {len(f)})",
                      rho_text, seed)
    h = history[np.isfinite(history[CDNV_TARGET]) & np.isfinite(history[transfer])]
    art2 = density(ax2, h[CDNV_TARGET].to_numpy(float), 100 * h[transfer].to_numpy(float),
                   log_x=True)
    for idx, kind in named.items():
        g = h[h["trial_index"] == idx]
        if len(g):
            colour = BEST if kind == "best" else WORST
            ax2.plot(g[CDNV_TARGET], 100 * g[transfer], color=colour, lw=1.1, marker="o",
                     ms=2.5, zorder=4)
            ax2.annotate(name(idx), (g[CDNV_TARGET].iloc[-1], 100 * g[transfer].iloc[-1]),
                         xytext=_offset(len([i for i in named if i < idx
                                             and named[i] == kind])),
                         textcoords="offset points", fontsize=7, color=colour)
    log_axis(ax2)
    ax2.set_xlabel("target CDNV (log scale)")
    ax2.set_title(f"Over training: every evaluated epoch of every trial ({len(h)} points)",
                  fontsize=11)
    ax2.tick_params(labelleft=True)
    for a in (ax, ax2):
        a.grid(True, which="major", alpha=0.3)
    count_bar(fig, art, ax, "trials per bin")
    count_bar(fig, art2, ax2, "(trial, epoch) points per bin")
    named_legend(fig, NAMED, "final " + describe(transfer))
    return fig
