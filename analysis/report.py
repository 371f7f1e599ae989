"""The study report: tables, figures and a plain-language verdict, in HTML or Markdown.

`analyze()` runs every analysis on one study, writes the report with its figures (PNG + SVG)
and CSV tables into one folder, logs that folder to the study's parent MLflow run under
`analysis/`, and logs the headline numbers as parent-run metrics
(`analysis/spearman/cdnv_target__fewshot_5w5s_ncc`, ...) so MLflow's compare view lines them up
across studies. `write_report()` is the entry point the study driver calls.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import bound as bound_mod
from analysis import correlate as corr
from analysis import effects as eff
from analysis import figures as figs
from analysis.correlate import format_ci
from analysis.errors import InputError
from analysis.runs import StudyRuns, describe, load_study

FORMATS = ("html", "md")
HEADLINE_X = "cdnv/target"
TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class Report:
    """What `analyze` produced.

    Attributes:
        path: the report file.
        verdict: the plain-language sentences at the top of the report.
        metrics: headline numbers logged to the parent run.
        n_usable, n_trials: usable trials and all trials of the study.
        too_few: why there is no correlation ("" when there is one).
        log_error: why logging to MLflow failed ("" when it worked or was not asked for).
    """

    path: Path
    verdict: list[str]
    metrics: dict[str, float]
    n_usable: int
    n_trials: int
    too_few: str = ""
    log_error: str = ""
    tables: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)


def default_out_dir(study_name: str) -> Path:
    """nctune-runs/studies/<NAME>/report/ under the current folder (the study's own folder)."""
    return Path.cwd() / "nctune-runs" / "studies" / study_name / "report"


def write_report(study_name: str, tracking_uri: str | None, out_dir: Path | str | None,
                 fmt: str = "html", experiment: str | None = None) -> Path:
    """Analyse `study_name` and write its report; returns the report file.

    A study with fewer than 3 usable trials still gets a report (saying why there is no
    correlation); `analyze(...).too_few` tells callers that want to treat it as an error.
    """
    return analyze(study_name, tracking_uri, out_dir, fmt=fmt, experiment=experiment).path


def analyze(study_name: str, tracking_uri: str | None = None, out_dir: Path | str | None = None,
            *, fmt: str = "html", experiment: str | None = None, n_boot: int = 2000,
            seed: int = 0, log_to_mlflow: bool = True) -> Report:
    """Load, analyse, plot, write and log one study (see module docstring)."""
    if fmt not in FORMATS:
        raise InputError(f"format: {fmt!r} is not one of {list(FORMATS)}")
    study = load_study(study_name, tracking_uri, experiment)
    out = Path(out_dir) if out_dir else default_out_dir(study_name)
    out.mkdir(parents=True, exist_ok=True)
    t = _tables(study, n_boot=n_boot, seed=seed)
    n_usable = len(study.usable)
    too_few = "" if n_usable >= corr.MIN_TRIALS else (
        f"only {n_usable} of {len(study.trials)} trials are usable (completed or early-stopped, "
        f"not diverged, with evaluation metrics); a correlation needs at least {corr.MIN_TRIALS}")
    verdict = _verdict(study, t, too_few)
    figures = _figures(study, t, out / "figures", seed)
    for name, table in t.items():
        if isinstance(table, pd.DataFrame):
            table.to_csv(out / f"{name}.csv", index=False)
    metrics = _headline_metrics(study, t)
    (out / "summary.json").write_text(json.dumps(
        {"study": study.name, "verdict": verdict, "metrics": metrics,
         "n_usable": n_usable, "n_trials": len(study.trials)}, indent=2, allow_nan=False))
    path = out / f"report.{fmt}"
    path.write_text(_render(fmt, study, t, verdict, figures, out), encoding="utf-8")
    log_error = _log(study, out, metrics) if log_to_mlflow else ""
    tables = {k: v for k, v in t.items() if isinstance(v, pd.DataFrame)}
    return Report(path, verdict, metrics, n_usable, len(study.trials), too_few, log_error, tables)


def _tables(study: StudyRuns, *, n_boot: int, seed: int) -> dict[str, Any]:
    transfer = corr.primary_transfer(study)
    trends, trend_summary = corr.within_trial_trends(study, transfer=transfer, n_boot=n_boot,
                                                     seed=seed)
    bt = bound_mod.bound_table(study)
    return {
        "trials": study.trials,
        "correlations": corr.correlation_table(study, level="trial", n_boot=n_boot, seed=seed),
        # pooled points: the cluster bootstrap is the costly part, and its CI the secondary one
        "correlations_epochs": corr.correlation_table(study, level="epoch",
                                                      n_boot=max(200, n_boot // 2), seed=seed),
        "within_trial": trends, "within_trial_summary": trend_summary,
        "generalization": corr.generalization(study, n_boot=n_boot, seed=seed),
        "effects": eff.hyperparameter_effects(study, n_boot=n_boot, seed=seed),
        "per_value": eff.per_value_table(study),
        "importances": eff.importances(study, seed=seed),
        "bound": bt, "bound_summary": bound_mod.bound_summary(bt),
        "transfer": transfer,
    }


def pval(p: float) -> str:
    return "n/a" if not np.isfinite(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _p_is(p: float) -> str:
    text = pval(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _pick(table: pd.DataFrame, x: str, y: str | None, method: str) -> pd.Series | None:
    r = table[(table["collapse"] == x) & (table["transfer"] == y) & (table["method"] == method)]
    return r.iloc[0] if len(r) else None


def _verdict(study: StudyRuns, t: dict[str, Any], too_few: str) -> list[str]:
    """Plain-language sentences; each number comes with its interval and its sample size."""
    trials, usable = study.trials, study.usable
    notes: list[str] = []
    left = trials[~trials["usable"]]
    if len(left):
        counts = left["status"].where(~left["diverged"], "diverged").value_counts()
        kinds = ", ".join(f"{n} {k}" for k, n in counts.items())
        notes.append(f"{len(left)} of {len(trials)} trials were left out ({kinds}); the trials "
                     "table lists each with its reason.")
    y = t["transfer"]
    s = _pick(t["correlations"], HEADLINE_X, y, "spearman")
    if too_few or s is None or not np.isfinite(s.estimate):
        why = too_few or (s.reason if s is not None else
                          f"the study logged no {HEADLINE_X} or no few-shot accuracy")
        return [f"No correlation is reported: {why}.", *notes]
    ps = _pick(t["correlations"], HEADLINE_X, y, "partial_spearman")
    yname = describe(y)
    sig, n = _clear(s), s.n_trials
    if sig:
        head = (f"Across {n} trials, lower target CDNV went with "
                f"{'higher' if s.estimate < 0 else 'lower'} {yname}: Spearman {_ci(s)}")
    elif not np.isfinite(s.ci_low):
        head = (f"Across only {n} trials, target CDNV and {yname} had Spearman "
                f"{format_ci(s.estimate, np.nan, np.nan)} ({_p_is(s.p_value)}), too few "
                "trials for an interval or a conclusion")
    else:
        head = (f"Across {n} trials, target CDNV and {yname} showed no clear association: "
                f"Spearman {_ci(s)}, {_p_is(s.p_value)}")
    partial = ps is not None and np.isfinite(ps.estimate) and np.isfinite(ps.ci_low)
    if ps is not None and partial:
        head += f"; controlling for source accuracy, {_ci(ps)}"
    out = [head + (" (95% intervals, bootstrap over trials)." if np.isfinite(s.ci_low) else ".")]
    if ps is not None and partial:
        psig = _clear(ps)
        if sig and not psig and abs(ps.estimate) < abs(s.estimate) / 2:
            out.append("Source accuracy accounts for most of it: better source models both "
                       "collapsed more and transferred better, and at equal source accuracy no "
                       "clear association is left, so these trials give no evidence of a direct "
                       "link.")
        elif sig and not psig:
            out.append(f"At equal source accuracy the estimate keeps "
                       f"{abs(ps.estimate / s.estimate):.0%} of its size but its interval covers "
                       "0: these trials cannot tell a direct link apart from better source "
                       "models both collapsing more and transferring better.")
        elif sig and psig and np.sign(ps.estimate) == np.sign(s.estimate):
            out.append("The association holds at equal source accuracy too, so it is not only a "
                       "by-product of better source models.")
        elif psig and not sig:
            out.append("At equal source accuracy an association appears that the raw "
                       "correlation does not show; read it with care.")
    elif ps is not None and ps.reason:
        out.append(f"No partial correlation: {ps.reason}.")
    if 5 <= n < 10:
        out.append(f"With only {n} trials the intervals are wide, and percentile bootstrap "
                   "intervals tend to run too narrow at this size: treat this as preliminary.")
    elif 10 <= n < 20:
        out.append(f"{n} trials is a modest sample: read the intervals, not the point estimates.")
    epochs = usable["final_epoch"].dropna()
    if epochs.nunique() > 1:
        out.append(f"Trials entered at different final epochs ({epochs.min():.0f} to "
                   f"{epochs.max():.0f}): early-stopped trials count at their last evaluation.")
    ts = t["within_trial_summary"]
    if ts.get("n_trials"):
        out.append(f"Within trials, target CDNV fell while {yname} rose in "
                   f"{ts['n_falls_while_rises']} of {ts['n_trials']} trials (median within-trial "
                   f"Spearman {format_ci(ts['median_rho'], ts['ci_low'], ts['ci_high'])}).")
    g = t["generalization"]
    g = g[(g["level"] == "trial") & (g["to"] == "target")] if len(g) else g
    if len(g) and np.isfinite(g.iloc[0].get("spearman", np.nan)):
        r = g.iloc[0]
        how = ("ranked trials much as target CDNV did" if r.ci_low > 0 else
               "did not clearly predict the trials' target CDNV")
        rho = format_ci(r.spearman, r.ci_low, r.ci_high)
        out.append(f"Source-train CDNV {how}: Spearman {rho}; "
                   f"target CDNV was {r.median_ratio:.2g}× source-train CDNV (median over "
                   f"trials, {r.variant}).")
    out += bound_mod.bound_sentences(t["bound_summary"])
    out += eff.importance_sentences(t["importances"], t["effects"], n)
    n_pairs = len(t["correlations"][["collapse", "transfer"]].drop_duplicates())
    out.append(f"The tables test {n_pairs} metric pairs with 4 methods at two levels; only the "
               f"headline ({HEADLINE_X} vs {y}) was fixed in advance, the rest is exploratory.")
    return out + notes


def _clear(e: Any) -> bool:
    """A finite interval that excludes 0 and p < 0.05: what the verdict calls a clear relation."""
    return bool(np.isfinite(e.ci_low) and (e.ci_low > 0 or e.ci_high < 0) and e.p_value < 0.05)


def _ci(e: Any) -> str:
    return format_ci(e.estimate, e.ci_low, e.ci_high)


def _figures(study: StudyRuns, t: dict[str, Any], folder: Path, seed: int) -> list[dict[str, Any]]:
    imp = t["importances"]
    top = imp[(imp["target"] == HEADLINE_X) & (imp["evaluator"] == "fanova")].dropna(
        subset=["param"]).sort_values("rank")
    params = eff.effect_params(study)
    # colour by what moves target CDNV most: the figures then show the regularizer's hand
    color_by = top["param"].iloc[0] if len(top) else (params[0] if params else None)
    s = _pick(t["correlations"], HEADLINE_X, t["transfer"], "spearman")
    rho = ""
    if s is not None and np.isfinite(s.estimate):
        rho = f"Spearman ρ = {_ci(s)}\n" + (f"(95% CI, {s.n_trials} trials)" if np.isfinite(
            s.ci_low) else f"({s.n_trials} trials: too few for a CI)")
    return figs.study_figures(study, t, folder, color_by=color_by, rho_text=rho, seed=seed)


def metric_slug(name: str) -> str:
    """'fewshot/5w5s/ncc/acc' -> 'fewshot_5w5s_ncc'; 'cdnv/target' -> 'cdnv_target'."""
    return name.removesuffix("/acc").replace("/", "_")


def _headline_metrics(study: StudyRuns, t: dict[str, Any]) -> dict[str, float]:
    """Parent-run metrics: trial-level Spearman (+ CI) and partial Spearman of each CDNV split
    against each NCC accuracy, within-trial trend and bound summaries. NaNs are left out."""
    m: dict[str, float] = {"analysis/n_trials": float(len(study.usable)),
                           "analysis/n_trials_total": float(len(study.trials))}
    c = t["correlations"]
    sel = c[c["collapse"].str.startswith("cdnv/") & c["transfer"].str.contains("/ncc/")
            & c["method"].isin(["spearman", "partial_spearman"])]
    for r in sel.itertuples():
        pair = f"{metric_slug(r.collapse)}__{metric_slug(r.transfer)}"
        m[f"analysis/{r.method}/{pair}"] = r.estimate
        m[f"analysis/{r.method}_ci_low/{pair}"] = r.ci_low
        m[f"analysis/{r.method}_ci_high/{pair}"] = r.ci_high
    ts = t["within_trial_summary"]
    if ts.get("n_trials"):
        m["analysis/within_trial/median_rho"] = float(ts["median_rho"])
        m["analysis/within_trial/frac_falls_while_rises"] = \
            ts["n_falls_while_rises"] / ts["n_trials"]
    for r in t["bound_summary"].itertuples():
        m[f"analysis/bound/{r.shape}/holds_frac"] = float(r.holds_frac)
        m[f"analysis/bound/{r.shape}/non_vacuous_frac"] = float(r.non_vacuous_frac)
        m[f"analysis/bound/{r.shape}/median_ratio"] = float(r.median_ratio)
    return {k: float(v) for k, v in m.items() if v is not None and math.isfinite(v)}


def _log(study: StudyRuns, folder: Path, metrics: dict[str, float]) -> str:
    """Log the report folder and the headline metrics to the parent run; '' or the error."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=study.tracking_uri)
    now = int(time.time() * 1000)
    try:
        items = [Metric(k, v, now, 0) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            client.log_batch(study.parent_run_id, metrics=items[i:i + 1000])
        client.log_artifacts(study.parent_run_id, str(folder), artifact_path="analysis")
    except (MlflowException, OSError) as exc:
        return f"could not log the report to MLflow run {study.parent_run_id}: {exc}"
    return ""


# Column labels in the report's tables (CSV files keep the raw names).
LABELS = {
    "spearman": "Spearman", "kendall": "Kendall τ", "pearson_log": "Pearson (log10 collapse)",
    "partial_spearman": "partial Spearman (given source acc)", "n_trials": "trials", "n": "points",
    "n_values": "values", "p_value": "p", "holds_frac": "holds", "points": "points",
    "holds_within_ci_frac": "holds within episode CI", "non_vacuous_frac": "bound < 1",
    "non_vacuous_holds_frac": "holds where bound < 1", "median_ratio": "median bound / error",
    "median_gap": "median bound − error", "final_holds_frac": "holds at final epoch",
    "final_median_ratio": "median bound / error, final epoch", "bound_source": "bound",
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


def _table(caption: str, df: pd.DataFrame, collapsed: bool = False) -> dict[str, Any]:
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
        rows.append({"collapse": x, "transfer": y, **{m: _ci(r) for m, r in by.items()},
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
         "tables": [_table(f"Across trials at their final epoch, against {y}", c[c["transfer"] == y]
                           if len(c) else c),
                    _table("Across trials, every transfer metric", c, collapsed=True),
                    _table("Across (trial, epoch) points, resampled by trial",
                           _corr_view(t["correlations_epochs"]), collapsed=True)]},
        {"id": "within", "title": "Within trials, over training",
         "figures": ["cdnv_over_epochs"],
         "tables": [_table("Does collapse fall while transfer rises, trial by trial?", ts),
                    _table("Per trial (Spearman over epochs)", t["within_trial"],
                           collapsed=True)]},
        {"id": "generalization", "title": "Does source-train collapse carry over?",
         "figures": [], "tables": [_table("Source-train CDNV against source-test and target "
                                          "CDNV, through comparable variants", gen)]},
        {"id": "effects", "title": "Regularization effects", "figures": ["effects", "importances"],
         "tables": [_table("Rank correlation of each hyperparameter with each target", effects),
                    _table("Mean per value over trials (parameters with few values; geometric "
                           "mean for CDNV)", pv),
                    _table("Optuna importances (fANOVA with seed 0, PED-ANOVA)", imp_view)]},
        {"id": "bound", "title": "The CDNV bound against the observed error",
         "figures": ["bound_vs_error"],
         "tables": [_table("Per episode shape, over (trial, epoch) points", t["bound_summary"])]},
        {"id": "trials", "title": "Trials", "figures": [],
         "tables": [_table("Every trial at its final evaluated epoch", trials)]},
    ]


def _render(fmt: str, study: StudyRuns, t: dict[str, Any], verdict: list[str],
            figures: list[dict[str, Any]], out: Path) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATES), keep_trailing_newline=True,
                      autoescape=select_autoescape(["html", "html.j2"]))
    tags = study.tags
    info = {"study": study.name, "tracking URI": study.tracking_uri,
            "experiment": study.experiment, "parent run": study.parent_run_id,
            "sampler": tags.get("nctune.sampler", ""), "search metric":
            f"{tags.get('nctune.metric', '')} ({tags.get('nctune.mode', '')})",
            "searched": ", ".join(study.searched),
            "trials": f"{len(study.usable)} usable of {len(study.trials)}",
            "status": tags.get("nctune.status", "")}
    return env.get_template(f"report.{fmt}.j2").render(
        study=study.name, description=tags.get("mlflow.note.content", ""), info=info,
        verdict=verdict, problems=study.problems, sections=_sections(study, t),
        figures={f["stem"]: f for f in figures})
