"""The predictor leaderboard as a forest plot: tau_w and Spearman with 95% intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.crosstrial.leaderboard import BASELINE, label
from analysis.crosstrial.runs import describe

KIND_COLOURS = {"baseline": "black", "collapse": "tab:blue", "estimator": "tab:orange",
                "layer": "tab:green"}
PANELS = (("weighted_tau", "weighted Kendall τ_w"), ("spearman", "Spearman ρ"))


def candidate_label(name: str, orientation: str) -> str:
    """The candidate in words with an arrow: ↑ higher predicts better transfer, ↓ lower."""
    return f"{label(name)} {'↓' if orientation.startswith('lower') else '↑'}"


def forest_plot(table: pd.DataFrame, transfer: str) -> Figure:
    """One row per candidate, sorted by tau_w against `transfer`; a panel per method; the
    baseline's estimate drawn as a dashed line so a reader sees who beats it."""
    t = table[table["transfer"] == transfer]
    tw = t[t["method"] == "weighted_tau"].sort_values("estimate", na_position="first")
    order = list(tw["candidate"])
    fig = Figure(figsize=(10.5, 1.6 + 0.27 * len(order)), layout="constrained")
    axes = fig.subplots(1, len(PANELS), sharey=True)
    for ax, (method, title) in zip(np.atleast_1d(axes), PANELS, strict=True):
        m = t[t["method"] == method].set_index("candidate").reindex(order)
        ypos = np.arange(len(order))
        for yi, (cand, r) in zip(ypos, m.iterrows(), strict=True):
            colour = KIND_COLOURS.get(str(r["kind"]), "0.4")
            if np.isfinite(r["ci_low"]):
                ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color=colour, lw=1.6)
            ax.plot(r["estimate"], yi, "o" if cand != BASELINE else "D", color=colour,
                    ms=5 if cand != BASELINE else 6)
        if BASELINE in m.index and np.isfinite(m.loc[BASELINE, "estimate"]):
            ax.axvline(m.loc[BASELINE, "estimate"], color="black", ls="--", lw=1,
                       label="source test accuracy (baseline)")
        ax.axvline(0.0, color="0.6", lw=0.8)
        ax.set_xlim(-1.05, 1.05)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("oriented: > 0 ranks trials the right way round", fontsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    by = tw.set_index("candidate")
    also = by["aliases"].fillna("") if "aliases" in by else pd.Series("", index=by.index)
    labels = [candidate_label(c, str(by.loc[c, "orientation"]))
              + (f" (= {also[c]})" if also[c] else "") for c in order]
    first = np.atleast_1d(axes)[0]
    first.set_yticks(np.arange(len(order)), labels, fontsize=8)
    handles = [first.plot([], [], "o", color=c, label=k)[0] for k, c in KIND_COLOURS.items()
               if k in set(t["kind"])]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8,
               frameon=False, title=f"against {describe(transfer)}; bars: 95% bootstrap "
               "interval over trials; ↑/↓: higher/lower value predicts better transfer",
               title_fontsize=8)
    return fig
