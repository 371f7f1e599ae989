"""The report's HTML and Markdown: tables laid out for reading, rendered through the templates.

`analysis.crosstrial.report` computes; this module only
formats (estimates with their intervals, p-values,
column labels) and fills `templates/report.{html,md}.j2`. CSV files keep the raw columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.contract import CDNV_TARGET
from analysis.crosstrial import correlate as corr
from analysis.crosstrial import store
from analysis.crosstrial.correlate import format_ci
from analysis.crosstrial.layers import layer_view
from analysis.crosstrial.leaderboard import leaderboard_view
from analysis.crosstrial.runs import StudyRuns

HEADLINE_X = CDNV_TARGET
TEMPLATES = Path(__file__).parent / "templates"


def pval(p: float) -> str:
    """A p-value as the report prints it: '< 0.001', three decimals, or 'n/a'."""
    return "n/a" if not np.isfinite(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def ci_text(e: Any) -> str:
    """'−0.88 [−0.98, −0.58]' for an estimate with its 95% interval."""
    return format_ci(e.estimate, e.ci_low, e.ci_high)


# Column labels in the report's tables (CSV files keep the raw names).
LABELS = {
    "spearman": "Spearman", "kendall": "Kendall τ", "pearson_log": "Pearson (log10 collapse)",
    "partial_spearman": "partial Spearman (given source acc)", "n_trials": "trials", "n": "points",
    "n_values": "values", "p_value": "p", "holds_frac": "holds", "points": "points",
    "holds_within_ci_frac": "holds within episode CI", "non_vacuous_frac": "bound < 1",
    "non_vacuous_holds_frac": "holds where bound < 1", "median_ratio": "median bound / error",
    "median_gap": "median bound − error", "final_holds_frac": "holds at final epoch",
    "final_median_ratio": "median bound / error, final epoch", "bound_source": "bound",
    "bound_name": "which bound", "weighted_tau": "weighted Kendall τ_w",
    "candidate": "predictor", "final_non_vacuous_frac": "bound < 1 at final epoch",
    "rho_collapse_epoch": "ρ(collapse, epoch)", "rho_transfer_epoch": "ρ(transfer, epoch)",
    "rho_collapse_transfer": "ρ(collapse, transfer)", "falls_while_rises": "falls while rises",
    "trial_index": "trial", "run_name": "run", "final_epoch": "final epoch",
    "fanova": "fANOVA", "ped_anova": "PED-ANOVA", "n_falls_while_rises": "falls while rises",
    "median_rho": "median ρ", "ci_low": "CI low", "ci_high": "CI high", "n_negative": "ρ < 0",
    "n_positive": "ρ > 0", "sign_p": "sign test p",
}


def _fmt(v: Any, percent: bool = False) -> str:
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, float | np.floating):
        if not np.isfinite(v):
            return ""
        return f"{100 * v:.0f}%" if percent else f"{v:.3g}"
    return "" if v is None else str(v)


def table(caption: str, df: pd.DataFrame, collapsed: bool = False) -> dict[str, Any]:
    """A frame as the templates' table: labelled columns, formatted cells."""
    pct = [c.endswith("_frac") for c in df.columns]
    return {"caption": caption, "columns": [LABELS.get(c, c) for c in df.columns],
            "collapsed": collapsed,
            "rows": [[_fmt(v, p) for v, p in zip(row, pct, strict=True)]
                     for row in df.itertuples(index=False)]}


def _corr_view(c: pd.DataFrame) -> pd.DataFrame:
    """One row per metric pair, a column per method: 'estimate [CI]'."""
    rows = []
    for (x, y), g in c.groupby(["collapse", "transfer"], sort=False):
        by = {r.method: r for r in g.itertuples()}
        sp = by.get("spearman")
        rows.append({"collapse": x, "transfer": y, **{m: corr.cell(r) for m, r in by.items()},
                     "p (Spearman)": pval(sp.p_value) if sp else "",
                     "n_trials": sp.n_trials if sp else "", "n": sp.n if sp else "",
                     "note": "; ".join(dict.fromkeys(r.reason for r in by.values() if r.reason))})
    return pd.DataFrame(rows)


def _with_ci(df: pd.DataFrame, col: str, est: str, lo: str, hi: str) -> pd.DataFrame:
    df = df.copy()
    df[col] = [format_ci(*(getattr(r, k, np.nan) for k in (est, lo, hi))) for r in df.itertuples()]
    return df


def _sections(study: StudyRuns, t: dict[str, Any]) -> list[dict[str, Any]]:
    y = t["transfer"]
    c = _corr_view(t["correlations"])
    gen = t["generalization"]
    if len(gen):
        gen = _with_ci(_with_ci(gen, "Spearman", "spearman", "ci_low", "ci_high"),
                       "to / from, median", "median_ratio", "ratio_ci_low", "ratio_ci_high")
        gen = gen[["from", "to", "level", "Spearman", "to / from, median", "n_trials", "n",
                   "variant", "reason"]]
    effects = t["effects"]
    if len(effects):
        effects = _with_ci(effects, "Spearman", "spearman", "ci_low", "ci_high")
        effects["p"] = effects["p_value"].map(pval)
        effects = effects[["param", "target", "kind", "Spearman", "p", "n_trials", "n_values",
                           "reason"]]
    pv = t["per_value"]
    if len(pv):
        pv = _with_ci(pv, "mean [95% CI]", "mean", "ci_low", "ci_high")
        pv = pv[["param", "target", "value", "n", "mean [95% CI]"]].rename(columns={"n": "trials"})
    imp = t["importances"]
    imp_view = imp[["target", "evaluator", "reason"]]
    if imp["param"].notna().any():
        imp_view = imp.dropna(subset=["param"]).pivot_table(
            index=["target", "param"], columns="evaluator", values="importance").reset_index()
        imp_view = imp_view.sort_values(["target", imp_view.columns[2]], ascending=[True, False])
    cols = ["trial_index", "run_name", "status", "final_epoch", "usable", "note",
            corr.CONTROL, HEADLINE_X, y]
    trials = study.final[[col for col in dict.fromkeys(cols) if col and col in study.final]]
    ts = pd.DataFrame([{k: v for k, v in t["within_trial_summary"].items()}])
    return [
        {"id": "correlations", "title": "Does collapse predict transfer?",
         "figures": ["transfer_vs_cdnv"],
         "tables": [table(f"Across trials at their final epoch, against {y}", c[c["transfer"] == y]
                           if len(c) else c),
                    table("Across trials, every transfer metric", c, collapsed=True),
                    table("Across (trial, epoch) points, resampled by trial",
                           _corr_view(t["correlations_epochs"]), collapsed=True)]},
        {"id": "within", "title": "Within trials, over training",
         "figures": ["cdnv_over_epochs"],
         "tables": [table("Does collapse fall while transfer rises, trial by trial?", ts),
                    table("Per trial (Spearman over epochs)", t["within_trial"],
                           collapsed=True)]},
        {"id": "generalization", "title": "Does source-train collapse carry over?",
         "figures": [], "tables": [table("Source-train CDNV against source-test and target "
                                          "CDNV, through comparable variants", gen)]},
        {"id": "effects", "title": "Regularization effects", "figures": ["effects", "importances"],
         "tables": [table("Rank correlation of each hyperparameter with each target", effects),
                    table("Mean per value over trials (parameters with few values; geometric "
                           "mean for CDNV)", pv),
                    table("Optuna importances (fANOVA with seed 0, PED-ANOVA)", imp_view)]},
        {"id": "layers", "title": "Where in the network", "lines": t["layer_lines"],
         "figures": ["layers_by_depth", "layers_heatmap"],
         "tables": [table(f"Per tap, across trials at their final epoch: its target CDNV and "
                           f"its own NCC accuracy against {y} (95% Fisher-z intervals; "
                           "partial: at equal source accuracy)",
                           layer_view(t["layers"]).assign(p=lambda d: d["p"].map(pval)))]},
        {"id": "leaderboard", "title": "Which statistic ranks transfer best?",
         "lines": [t["leaderboard_line"]] if t.get("leaderboard_line") else [],
         "figures": ["leaderboard"],
         "tables": [table(f"Every candidate against {y} across trials at their final epoch, "
                           "oriented so that > 0 ranks trials the right way round (95% "
                           "bootstrap intervals over trials; partial: at equal source "
                           "accuracy); best τ_w first", leaderboard_view(t["leaderboard"], y)
                           if y and "leaderboard" in t else pd.DataFrame())]},
        {"id": "bound", "title": "The bounds against the observed error",
         "lines": t.get("bound_unchecked", []),
         "figures": ["bound_vs_error"],
         "tables": [table("Per bound (CDNV: against ncc_raw; Cantelli: against the primary "
                           "ncc) and episode shape, over (trial, epoch) points",
                           t["bound_summary"])]},
        {"id": "trials", "title": "Trials", "figures": [],
         "tables": [table("Every trial at its final evaluated epoch", trials)]},
        *_pareto_section(study),
        *_intervention_section(t),
    ]


def _intervention_section(t: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 23's section (analysis.crosstrial.intervention_report), when the study has one."""
    sec = t.get("intervention")
    if not sec:
        return []
    tables = [table(sec["tables"][0]["caption"], sec["effects"])] if len(sec["effects"]) else []
    return [{**sec, "tables": tables}]


def _pareto_section(study: StudyRuns) -> list[dict[str, Any]]:
    """A multi-objective study's Pareto front: its figure and its trials ([] otherwise)."""
    from analysis.crosstrial.pareto import objectives, pareto_rows

    metrics, modes = objectives(study.tags)
    if len(metrics) < 2:
        return []
    front = pareto_rows(study.final, metrics, modes)
    cols = ["trial_index", "run_name", *study.searched, *metrics]
    return [{"id": "pareto", "title": "Pareto front", "figures": ["pareto_front"],
             "lines": [f"{len(front)} trials are on the front of "
                       + " and ".join(f"{m} ({mode})" for m, mode in
                                      zip(metrics, modes, strict=True)) + "."],
             "tables": [table("Trials on the Pareto front",
                               front[[c for c in dict.fromkeys(cols) if c in front]])]}]


def templates() -> Any:
    """The jinja2 environment of templates/ (HTML autoescaped); base.html.j2 is every report's
    look."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    return Environment(loader=FileSystemLoader(TEMPLATES), keep_trailing_newline=True,
                       autoescape=select_autoescape(["html", "html.j2"]))


def render_probe(study: str, probe: str, info: dict[str, str], verdict: list[str],
                 sections: list[dict[str, Any]], figures: list[dict[str, Any]]) -> str:
    """The probe report's HTML: the study report's template and style, the probe's sections."""
    return templates().get_template("probe.html.j2").render(
        study=study, probe=probe, info=info, verdict=verdict, problems=[], sections=sections,
        figures={f["stem"]: f for f in figures})


def render(fmt: str, study: StudyRuns, t: dict[str, Any], verdict: list[str],
           figures: list[dict[str, Any]], out: Path) -> str:
    """Fill the HTML or Markdown template with the report's tables, verdict and figures; returns the
    text written to `out`."""
    env = templates()
    tags = study.tags
    info = {"study": study.name, "tracking URI": study.tracking_uri,
            "experiment": study.experiment, "parent run": study.parent_run_id,
            "sampler": tags.get(store.TAG_SAMPLER, ""), "search metric":
            f"{tags.get(store.TAG_METRIC, '')} ({tags.get(store.TAG_MODE, '')})",
            "searched": ", ".join(study.searched),
            "trials": f"{len(study.usable)} usable of {len(study.trials)}",
            "status": tags.get(store.TAG_STATUS, "")}
    return env.get_template(f"report.{fmt}.j2").render(
        study=study.name, description=tags.get("mlflow.note.content", ""), info=info,
        verdict=verdict, problems=study.problems, sections=_sections(study, t),
        figures={f["stem"]: f for f in figures})
