"""Terminal tables: a study's trials (`show`, end of `run`) and the studies (`ls`)."""

from __future__ import annotations

import math
from typing import Any

from analysis.crosstrial.runs import StudyRuns

SHOWN_METRICS = [
    ("source/test_acc", "src_acc"),
    ("cdnv/source_train", "cdnv_src_tr"),
    ("cdnv/source_test", "cdnv_src_te"),
    ("cdnv/target", "cdnv_tgt"),
    ("fewshot/5w1s/ncc/acc", "5w1s_ncc"),
    ("fewshot/5w5s/ncc/acc", "5w5s_ncc"),
]


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"
    return str(value)


def render(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def trials_table(study: StudyRuns, metric: str | None = None) -> str:
    """One line per trial: index, status, searched params, epochs, final metrics."""
    final = study.final.sort_values("trial_index")
    metrics = [(k, label) for k, label in SHOWN_METRICS if k in final.columns]
    if metric and metric in final.columns and metric not in dict(metrics):
        metrics.append((metric, metric.split("/", 1)[-1]))
    header = ["trial", "status", *study.searched, "epoch", *[label for _, label in metrics]]
    rows = []
    for _, r in final.iterrows():
        rows.append([f"t{int(r['trial_index']):03d}", str(r["status"]),
                     *[fmt(r.get(p)) for p in study.searched],
                     fmt(r.get("final_epoch")), *[fmt(r.get(k)) for k, _ in metrics]])
    return render(rows, header) if rows else "(no trials)"


def best_trial(study: StudyRuns, metric: str, mode: str) -> tuple[str, float] | None:
    final = study.final
    if metric not in final.columns:
        return None
    usable = final[final["usable"]].dropna(subset=[metric])
    if usable.empty:
        return None
    row = usable.loc[usable[metric].idxmax() if mode == "max" else usable[metric].idxmin()]
    return f"t{int(row['trial_index']):03d}", float(row[metric])
