"""The Pareto set of a multi-objective study, and its figure.

A trial is on the Pareto front when no other trial is at least as good on every objective and
strictly better on one (Deb et al., "A fast and elitist multiobjective genetic algorithm:
NSGA-II", IEEE TEC 2002, the dominance relation Optuna's `best_trials` uses). Kornblith et al.
("Why do better loss functions lead to less transferable features?", NeurIPS 2021) is why a
researcher wants it here: source accuracy and transfer pull against each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.crosstrial import store


def pareto_mask(values: np.ndarray, modes: list[str]) -> np.ndarray:
    """Which rows of `values` (trials x objectives) no other row dominates.

    Row a dominates row b when a >= b on every objective turned to "max" (min objectives are
    negated) and a > b on at least one. Rows with a NaN are never on the front. O(n^2 k), fine
    for studies of thousands of trials.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or v.shape[1] != len(modes):
        raise ValueError(f"values of shape {v.shape} for {len(modes)} objectives")
    sign = np.array([1.0 if m == "max" else -1.0 for m in modes])
    v = v * sign
    finite = np.isfinite(v).all(axis=1)
    geq = (v[:, None, :] >= v[None, :, :]).all(axis=2)  # [a, b]: a >= b everywhere
    gt = (v[:, None, :] > v[None, :, :]).any(axis=2)
    dominates = geq & gt & finite[:, None] & finite[None, :]
    return finite & ~dominates.any(axis=0)


def pareto_rows(final: pd.DataFrame, metrics: list[str], modes: list[str]) -> pd.DataFrame:
    """The usable trials on the Pareto front, sorted by the first objective (best first)."""
    if any(m not in final.columns for m in metrics):
        return final.iloc[:0]
    usable = final[final["usable"]] if "usable" in final.columns else final
    usable = usable.dropna(subset=metrics)
    if usable.empty:
        return usable
    front = usable[pareto_mask(usable[metrics].to_numpy(), modes)]
    return front.sort_values(metrics[0], ascending=modes[0] == "min")


def objectives(tags: dict[str, str]) -> tuple[list[str], list[str]]:
    """The study's search metrics and modes from its parent-run tags (`a,b` / `max,min`)."""
    metrics = [m for m in tags.get(store.TAG_METRIC, "").split(",") if m]
    modes = [m for m in tags.get(store.TAG_MODE, "").split(",") if m]
    return (metrics, modes) if len(metrics) == len(modes) else ([], [])


def pareto_figures(final: pd.DataFrame, tags: dict[str, str],
                   folder: Path) -> list[dict[str, Any]]:
    """The report's Pareto-front figure of a multi-objective study ([] for one objective):
    every usable trial on the first two objectives, the front drawn and labelled."""
    import matplotlib.pyplot as plt

    from analysis.crosstrial.plotting import report_figure

    metrics, modes = objectives(tags)
    if len(metrics) < 2 or any(m not in final.columns for m in metrics[:2]):
        return []
    usable = final[final["usable"]].dropna(subset=metrics[:2])
    if usable.empty:
        return []
    front = pareto_rows(usable, metrics, modes)
    x, y = metrics[0], metrics[1]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.scatter(usable[x], usable[y], s=28, color="#9aa5b1", label="trial", zorder=2)
    line = front.sort_values(x)
    ax.plot(line[x], line[y], "-o", color="#d1495b", ms=7, label="Pareto front", zorder=3)
    for _, row in front.iterrows():
        ax.annotate(f"t{int(row['trial_index']):03d}", (row[x], row[y]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(f"{x} ({modes[0]})")
    ax.set_ylabel(f"{y} ({modes[1]})")
    ax.set_title(f"Pareto front: {len(front)} of {len(usable)} trials")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    caption = (f"{x} against {y} at each usable trial's final epoch; red: the Pareto front "
               "(no other trial is at least as good on both and better on one).")
    entry = report_figure(fig, folder, "pareto_front", caption)
    plt.close(fig)
    return [entry]
