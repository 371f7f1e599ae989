"""The probe report's figure and its Markdown tables (see `probe_report`).

One figure answers the probe's question at a glance: few-shot accuracy against source-train
CDNV (log scale), in-domain on the left and on the probe's domain on the right, one point per
trial, the same trials in both panels. A zoo of pretrained models has no source classes, so its
one panel plots accuracy against CDNV measured on the probe's domain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import contract
from analysis.crosstrial.plotting import log_axis, report_figure, trend
from analysis.crosstrial.runs import describe

SOURCE_CDNV = contract.collapse_key("cdnv", contract.SOURCE_TRAIN)


def probe_figure(frame: pd.DataFrame, name: str, y_probe: str | None, folder: Path, *,
                 zoo: bool) -> dict[str, str] | None:
    """Write figures/probe.png (+ .svg) under `folder`; its report entry (plotting.report_figure),
    or None with nothing to plot."""
    if y_probe is None:
        return None
    home = contract.DEFAULT_SEARCH_METRIC
    x_probe = contract.probe_key(name, contract.CDNV_TARGET)
    if zoo:
        panels = [(x_probe, y_probe, f"CDNV on '{name}' (log; lower = more collapse)",
                   f"on '{name}', one point per model")]
    else:
        panels = [(SOURCE_CDNV, home, "source-train CDNV (log; lower = more collapse)",
                   "in-domain: the study's own target classes"),
                  (SOURCE_CDNV, y_probe, "source-train CDNV (log; lower = more collapse)",
                   f"new domain: '{name}'")]
    fig = Figure(figsize=(5.5 * len(panels), 4.4), layout="constrained")
    # Own y scales: the two domains' accuracies may lie far apart; the question is the ranking.
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    shape = describe(contract.DEFAULT_SEARCH_METRIC if y_probe.endswith(
        contract.DEFAULT_SEARCH_METRIC) else y_probe.split("/", 2)[2])
    for ax, (x, y, xlabel, title) in zip(axes, panels, strict=True):
        draw_panel(ax, frame, x, y, xlabel, title)
        ax.set_ylabel(f"{shape} (%)")
    caption = ("Few-shot accuracy against CDNV, one point per model, on the probe's domain."
               if zoo else "Few-shot accuracy against source-train CDNV, one point per trial: "
               "in-domain (left) and on the probe's domain (right), with a trend and its band.")
    return report_figure(fig, folder / "figures", "probe", caption)


def draw_panel(ax: Any, frame: pd.DataFrame, x: str, y: str, xlabel: str, title: str) -> None:
    """Scatter of one trial per point, labelled, with a trend and band from 5 points on."""
    a = ax
    ok = frame[[c for c in (x, y) if c in frame]].notna().all(axis=1) if {x, y} <= set(
        frame.columns) else pd.Series(False, index=frame.index)
    f = frame[ok]
    xs, ys = f[x].to_numpy(float) if len(f) else np.zeros(0), 100 * f[y].to_numpy(float) \
        if len(f) else np.zeros(0)
    a.scatter(xs, ys, s=45, color="tab:blue", edgecolors="black", linewidths=0.5, zorder=3)
    names = f["run_name"].astype(str)  # `t003 wd=1e-4 ...`: its index; `m002 cnx`: whole
    labels = names.where(names.str.len() <= 16, names.str.split().str[0])
    for xi, yi, label in zip(xs, ys, labels, strict=True):
        a.annotate(label, (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if len(f) and (xs > 0).all():
        trend(a, xs, ys, log_x=True)
        log_axis(a)
        low, high = a.get_ylim()
        a.set_ylim(low, min(high, 100.5))  # a trend band past 100% accuracy means nothing
    a.set_xlabel(xlabel)
    a.set_title(f"{title} (n = {len(f)})", fontsize=10)
    a.grid(True, which="major", alpha=0.3)


def md_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A Markdown table (pandas' to_markdown needs the optional `tabulate`)."""
    def cell(v: object) -> str:
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.{digits}g}"
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([head, rule, *rows])
