"""The probe report's figure and its HTML page (see `probe_report`).

One figure answers the probe's question at a glance: few-shot accuracy against source-train
CDNV (log scale), in-domain on the left and on the probe's domain on the right, one point per
trial, the same trials in both panels. A zoo of pretrained models has no source classes, so its
one panel plots accuracy against CDNV measured on the probe's domain.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import contract
from analysis.crosstrial.plotting import log_axis, save_figure, trend
from analysis.crosstrial.runs import describe

SOURCE_CDNV = contract.collapse_key("cdnv", contract.SOURCE_TRAIN)


def probe_figure(frame: pd.DataFrame, name: str, y_probe: str | None, folder: Path, *,
                 zoo: bool) -> Path | None:
    """Write figures/probe.png (+ .svg) under `folder`; its path, or None with nothing to plot."""
    if y_probe is None:
        return None
    home = contract.DEFAULT_SEARCH_METRIC
    x_probe = contract.probe_key(name, contract.collapse_key("cdnv", contract.TARGET))
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
    return save_figure(fig, folder / "figures", "probe")["png"]


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


def render_html(markdown: str, figure: Path | None) -> str:
    """A self-contained HTML page of the Markdown report (headings, lists, tables, the figure
    inlined), so the file can be mailed or opened from MLflow's artifact view alone."""
    body, table = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            body.append(html_table(table))
            table = []
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("- "):
            body.append(f"<p>{html.escape(line[2:])}</p>")
        elif line.startswith("![") and figure is not None:
            data = base64.b64encode(figure.read_bytes()).decode()
            body.append(f'<img alt="probe figure" style="max-width:100%" '
                        f'src="data:image/png;base64,{data}">')
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse;font-size:90%}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>probe report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def html_table(lines: list[str]) -> str:
    """A Markdown table's lines as an HTML table."""
    rows = [[html.escape(c.strip()) for c in ln.strip().strip("|").split("|")] for ln in lines
            if not set(ln.replace("|", "").strip()) <= {"-"}]
    head = "".join(f"<th>{c}</th>" for c in rows[0]) if rows else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"
