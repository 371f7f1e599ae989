"""The report section "Does moving collapse move transfer?" and its figure, from a study's trials.

The statistics and the sentences are `analysis.crosstrial.intervention`'s; this module picks the
levels (the distinct settings of the collapse controls the study searched; the baseline is the
one with every control off), the columns (collapse x = log10 cdnv/target, transfer y = the
primary few-shot accuracy), builds the tables and draws the figure. A study that searched no
control, or has no baseline level, gets no section (None).
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import contract as names
from analysis.crosstrial.intervention import WEAK_F, iv_anova, iv_sentences, level_effects

CONTROL_PARAMS = ("feature_entropy", "center_loss", "etf_head")  # trainables.config fields
TITLE = "Does moving collapse move transfer?"
STEM = "intervention"
X_NAME = "log10 target CDNV"


def _off(value: Any) -> bool:
    return value in (0, 0.0, False, "0", "0.0", "False", "false") or (
        isinstance(value, float) and value == 0.0)


def level_label(row: pd.Series, controls: list[str]) -> str:
    """'no control' for the baseline, else 'center_loss=0.5, feature_entropy=0.5' (those on)."""
    on = [f"{c}={row[c]}" for c in controls if not _off(row[c])]
    return ", ".join(on) if on else "no control"


def primary_transfer(frame: pd.DataFrame) -> str | None:
    """fewshot/5w5s/ncc/acc when present, else the first NCC few-shot accuracy column."""
    if names.DEFAULT_SEARCH_METRIC in frame.columns:
        return names.DEFAULT_SEARCH_METRIC
    accs = sorted(c for c in frame.columns if names.is_fewshot_acc(c) and "/ncc/" in c)
    return accs[0] if accs else None


def _effects_table(frame: pd.DataFrame, columns: dict[str, str], groups: np.ndarray
                   ) -> pd.DataFrame:
    rows = []
    for label, col in columns.items():
        ok = frame[col].notna().to_numpy()
        if ok.sum() < 3 or "no control" not in set(groups[ok]):
            continue
        for level, d, lo, hi, p in level_effects(frame[col].to_numpy(float)[ok], groups[ok],
                                                 "no control"):
            rows.append({"measure": label, "level": level, "change vs no control": d,
                         "ci95_low": lo, "ci95_high": hi, "p": p})
    return pd.DataFrame(rows)


def intervention_section(final: pd.DataFrame, searched: list[str], folder: Path | None
                         ) -> dict[str, Any] | None:
    """The section (id, title, lines, verdict, figures, tables, figure_entries, effects,
    result), or None when the study is not an intervention on a collapse control.

    Args:
        final: one row per usable trial at its final epoch (StudyRuns.usable).
        searched: the study's searched keys.
        folder: where the figure is written (None: no figure).
    """
    controls = [c for c in CONTROL_PARAMS if c in searched and c in final.columns]
    y_col = primary_transfer(final)
    if not controls or y_col is None or names.CDNV_TARGET not in final.columns:
        return None
    frame = final.dropna(subset=[names.CDNV_TARGET, y_col]).copy()
    frame = frame[frame[names.CDNV_TARGET] > 0]
    frame["level"] = [level_label(r, controls) for _, r in frame.iterrows()]
    groups = frame["level"].to_numpy()
    if "no control" not in set(groups) or len(set(groups)) < 2 or len(frame) - len(
            set(groups)) < 1:
        return None
    x = np.log10(frame[names.CDNV_TARGET].to_numpy(float))
    y = frame[y_col].to_numpy(float)
    r = iv_anova(x, y, groups)
    lines = iv_sentences(float(r.first_f[0]), float(r.reduced_p[0]), float(r.beta[0]),
                         float(r.ar_low[0]), float(r.ar_high[0]), str(r.ar_kind[0]),
                         x_name=X_NAME, y_name=y_col, n=r.n, k=r.k)
    measures = {X_NAME: "_log_cdnv_target"}
    frame["_log_cdnv_target"] = x
    src = names.collapse_key("cdnv", names.SOURCE_TRAIN)
    if src in frame.columns:
        frame["_log_cdnv_source_train"] = np.log10(frame[src].where(frame[src] > 0))
        measures["log10 source-train CDNV"] = "_log_cdnv_source_train"
    for col in (names.SOURCE_TEST_ACC, *sorted(c for c in frame.columns  # primary NCC only
                                               if names.is_fewshot_acc(c) and "/ncc/" in c)):
        if col in frame.columns:
            measures[col] = col
    effects = _effects_table(frame, measures, groups)
    caveat = _source_caveat(effects)
    verdict = [lines[0], *caveat]  # what the report's verdict repeats
    lines[1:1] = _manipulation_check(effects)
    lines.extend(caveat)
    figure = intervention_figure(frame, x, y, y_col, r, folder) if folder is not None else []
    return {"id": "intervention", "title": TITLE, "lines": lines, "verdict": verdict,
            "figures": [STEM] if figure else [], "figure_entries": figure,
            "tables": [{"caption": "Each control level against no control (difference of "
                        "means over seeds; 95% t intervals with the pooled within-level "
                        "variance, one per comparison, unadjusted)", "frame": effects}],
            "effects": effects, "result": r}


def _manipulation_check(effects: pd.DataFrame) -> list[str]:
    """One sentence: each level's change of target and source-train CDNV against no control, as
    a factor with its 95% interval (10 ** the log10 difference)."""
    if effects.empty:
        return []
    parts = []
    for level, rows in effects.groupby("level", sort=False):
        bits = []
        for measure, short in ((X_NAME, "target"), ("log10 source-train CDNV", "source-train")):
            row = rows[rows["measure"] == measure]
            if len(row):
                d, lo, hi = (float(row[c].iloc[0]) for c in
                             ("change vs no control", "ci95_low", "ci95_high"))
                bits.append(f"{short} CDNV ×{10 ** d:.2g} [{10 ** lo:.2g}, {10 ** hi:.2g}]")
        if bits:
            parts.append(f"{level}: {', '.join(bits)}")
    return ["Manipulation check, each level against no control (95% intervals over seeds, one "
            "per comparison): " + "; ".join(parts) + "."] if parts else []


def _source_caveat(effects: pd.DataFrame) -> list[str]:
    """Where a level moved source test accuracy (its interval excludes 0), say that the
    exclusion assumption is doubtful for it."""
    if effects.empty:
        return []
    src = effects[(effects["measure"] == names.SOURCE_TEST_ACC)
                  & ((effects["ci95_low"] > 0) | (effects["ci95_high"] < 0))]
    if src.empty:
        return []
    moved = "; ".join(f"{row['level']}: {row['change vs no control']:+.3f} "
                      f"[{row['ci95_low']:+.3f}, {row['ci95_high']:+.3f}]"
                      for _, row in src.iterrows())
    return [f"These controls also moved source test accuracy ({moved}), so part of any change "
            "in transfer may come from a better or worse source model rather than from "
            "collapse itself."]


def intervention_figure(frame: pd.DataFrame, x: np.ndarray, y: np.ndarray, y_col: str,
                        r: Any, folder: Path) -> list[dict[str, Any]]:
    """Transfer against collapse: seeds as points coloured by level, the level means joined in
    order of their collapse (the intervention's path), and the 2SLS slope through them."""
    import matplotlib.pyplot as plt

    from analysis.crosstrial.plotting import save_figure

    levels = frame["level"].to_numpy()
    order = sorted(set(levels.tolist()), key=lambda lv: x[levels == lv].mean())
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(6.8, 4.8))
    means = []
    for i, lv in enumerate(order):
        colour = cmap(i / max(1, len(order) - 1))
        m = levels == lv
        ax.scatter(x[m], y[m], s=30, color=colour, alpha=0.8, zorder=3, label=lv)
        means.append((x[m].mean(), y[m].mean()))
        ax.scatter(*means[-1], s=110, marker="D", color=colour, edgecolor="black", zorder=4)
    mx, my = np.array(means).T
    ax.plot(mx, my, "-", color="black", lw=1.2, zorder=2, label="path (level means)")
    beta = float(r.beta[0])
    # the slope only where the text estimates one (a strong first stage, a non-empty AR set)
    if math.isfinite(beta) and float(r.first_f[0]) >= WEAK_F and r.ar_kind[0] != "empty":
        xs = np.array([mx.min(), mx.max()])  # over the level means: the range it is fit on
        ax.plot(xs, y.mean() + beta * (xs - x.mean()), "--", color="#d1495b", lw=1,
                label=f"2SLS slope {beta:+.3g}")
    ax.set_xlabel(f"{X_NAME} (lower = more collapse)")
    ax.set_ylabel(y_col)
    ax.set_title(f"{TITLE}\nfirst-stage F = {float(r.first_f[0]):.3g}, "
                 f"{r.n} trials in {r.k} levels")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    paths = save_figure(fig, folder, STEM)
    plt.close(fig)
    caption = (f"{y_col} against {X_NAME} at each trial's final epoch: points are seeds, "
               "diamonds the level means, the black line the intervention's path from the "
               "least to the most collapsed level, the dashed line the 2SLS slope (drawn only "
               "where the section estimates one).")
    return [{"stem": STEM, "caption": caption, "png": f"figures/{STEM}.png",
             "svg": f"figures/{STEM}.svg",
             "data": base64.b64encode(paths["png"].read_bytes()).decode()}]
