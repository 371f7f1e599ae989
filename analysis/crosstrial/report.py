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

from analysis import contract as names
from analysis.contract import analysis_key
from analysis.crosstrial import bound_check as bound_mod
from analysis.crosstrial import correlate as corr
from analysis.crosstrial import effects as eff
from analysis.crosstrial import figures as figs
from analysis.crosstrial import fisherz, store
from analysis.crosstrial import intervention_report as iv_report
from analysis.crosstrial import layers as layer_mod
from analysis.crosstrial import leaderboard as lb
from analysis.crosstrial import trends as trend_mod
from analysis.crosstrial import verdict as verdict_mod
from analysis.crosstrial.correlate import format_ci
from analysis.crosstrial.pareto import pareto_figures
from analysis.crosstrial.report_render import HEADLINE_X, ci_text, pval, render
from analysis.crosstrial.runs import StudyRuns, describe, load_study
from analysis.errors import InputError

FORMATS = ("html", "md")


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
        answer: how many leading verdict lines answer the study's question (the headline, the
            partial correlation, the power): what `nctune run` prints at its end.
    """

    path: Path
    verdict: list[str]
    metrics: dict[str, float]
    n_usable: int
    n_trials: int
    too_few: str = ""
    log_error: str = ""
    tables: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    answer: int = 1


def default_out_dir(study_name: str) -> Path:
    """nctune-runs/studies/<NAME>/report/ under the current folder (the study's own folder)."""
    return store.report_dir(store.DEFAULT_ROOT, study_name)


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
    verdict, answer = _verdict(study, t, too_few)
    figures = _figures(study, t, out / "figures", seed)
    # ---- issue 23: "Does moving collapse move transfer?" (crosstrial.intervention_report);
    # None unless the study searched a collapse control with an all-off level.
    t["intervention"] = iv_report.intervention_section(study.usable, study.searched,
                                                       out / "figures")
    if t["intervention"] is not None:
        figures += t["intervention"]["figure_entries"]
        verdict.extend(t["intervention"]["verdict"])
        t["intervention"]["effects"].to_csv(out / "intervention.csv", index=False)
    # ---- end of issue 23
    for name, table in t.items():
        if isinstance(table, pd.DataFrame):
            table.to_csv(out / f"{name}.csv", index=False)
    metrics = _headline_metrics(study, t)
    (out / "summary.json").write_text(json.dumps(
        {"study": study.name, "verdict": verdict, "metrics": metrics,
         "n_usable": n_usable, "n_trials": len(study.trials)}, indent=2, allow_nan=False))
    path = out / f"report.{fmt}"
    path.write_text(render(fmt, study, t, verdict, figures, out), encoding="utf-8")
    log_error = _log(study, out, metrics) if log_to_mlflow else ""
    tables = {k: v for k, v in t.items() if isinstance(v, pd.DataFrame)}
    return Report(path, verdict, metrics, n_usable, len(study.trials), too_few, log_error, tables,
                  answer)


def _tables(study: StudyRuns, *, n_boot: int, seed: int) -> dict[str, Any]:
    transfer = corr.primary_transfer(study)
    trends, trend_summary = trend_mod.within_trial_trends(study, transfer=transfer, n_boot=n_boot,
                                                     seed=seed)
    bt = bound_mod.bound_table(study)
    layers = layer_mod.layer_table(study.usable, transfer, n_boot=n_boot, seed=seed)
    return {
        "trials": study.trials,
        "correlations": corr.correlation_table(study, level="trial", n_boot=n_boot, seed=seed),
        # pooled points: the cluster bootstrap is the costly part, and its CI the secondary one
        "correlations_epochs": corr.correlation_table(study, level="epoch",
                                                      n_boot=max(200, n_boot // 2), seed=seed),
        "within_trial": trends, "within_trial_summary": trend_summary,
        "generalization": trend_mod.generalization(study, n_boot=n_boot, seed=seed),
        "effects": eff.hyperparameter_effects(study, n_boot=n_boot, seed=seed),
        "per_value": eff.per_value_table(study),
        "importances": eff.importances(study, seed=seed),
        "bound": bt, "bound_summary": bound_mod.bound_summary(bt),
        "bound_unchecked": bound_mod.unchecked_bounds(study),
        **_leaderboard(study, transfer, n_boot=n_boot, seed=seed),
        "transfer": transfer,
        "layers": layers,
        "layer_lines": layer_mod.layer_sentences(layers, study.usable, transfer),
    }


def _leaderboard(study: StudyRuns, transfer: str | None, *, n_boot: int,
                 seed: int) -> dict[str, Any]:
    """The predictor leaderboard (analysis.crosstrial.leaderboard) and its verdict."""
    table, taus = lb.leaderboard_table(study.usable, n_boot=n_boot, seed=seed)
    v = lb.verdict(taus, transfer) if transfer else None
    return {"leaderboard": table, "leaderboard_verdict": v,
            "leaderboard_line": lb.verdict_sentence(v) if len(table) else "",
            "leaderboard_metrics": lb.parent_metrics(v, taus)}


def _p_is(p: float) -> str:
    text = pval(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _pick(table: pd.DataFrame, x: str, y: str | None, method: str) -> pd.Series | None:
    r = table[(table["collapse"] == x) & (table["transfer"] == y) & (table["method"] == method)]
    return r.iloc[0] if len(r) else None


def _verdict(study: StudyRuns, t: dict[str, Any], too_few: str) -> tuple[list[str], int]:
    """Plain-language sentences, each number with its interval and its sample size; and how many
    of them (from the top) answer the study's question."""
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
        return [f"No correlation is reported: {why}.", *notes], 1
    ps = _pick(t["correlations"], HEADLINE_X, y, "partial_spearman")
    yname = describe(y)
    n, how = s.n_trials, verdict_mod.state(s)
    if how == "clear":
        head = (f"Across {n} trials, lower target CDNV went with "
                f"{'higher' if s.estimate < 0 else 'lower'} {yname}: Spearman {ci_text(s)}, "
                f"{_p_is(s.p_value)}")
    elif how == "withheld":
        head = (f"Across only {n} trials, target CDNV and {yname} had Spearman "
                f"{format_ci(s.estimate, np.nan, np.nan)} ({_p_is(s.p_value)}), too few "
                "trials for an interval or a conclusion")
    elif how == "split":
        head = (f"Across {n} trials, the interval and the test for target CDNV and {yname} "
                f"disagree: Spearman {ci_text(s)}, {_p_is(s.p_value)}; no conclusion")
    else:
        head = (f"Across {n} trials, target CDNV and {yname} showed no clear association: "
                f"Spearman {ci_text(s)}, {_p_is(s.p_value)}")
    basis = "Fisher z over trials" if s.p_method.startswith("Fisher") else "bootstrap over trials"
    out = [head + (f" (95% intervals, {basis})." if np.isfinite(s.ci_low) else ".")]
    if ps is not None:
        out.append(partial_sentence(s, ps) or "")
        out.append(fisherz.power_sentence(ps.n_trials))
    out = [line for line in out if line]
    answer = len(out)
    if 5 <= n < 10:
        out.append(f"With only {n} trials the intervals are wide: treat this as preliminary.")
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
    out += [t["leaderboard_line"]] if t["leaderboard_line"] else []
    out += bound_mod.bound_sentences(t["bound_summary"]) + t["bound_unchecked"]
    out += eff.importance_sentences(t["importances"], t["effects"], n)
    n_pairs = len(t["correlations"][["collapse", "transfer"]].drop_duplicates())
    out.append(f"The tables test {n_pairs} metric pairs with 4 methods at two levels; only the "
               f"headline ({HEADLINE_X} vs {y}) was fixed in advance, the rest is exploratory.")
    return out + notes, answer


def partial_sentence(s: Any, ps: Any) -> str | None:
    """What the partial Spearman given source accuracy adds to the headline Spearman `s`: the one
    sentence of the decision table in analysis.crosstrial.verdict (README: "How the verdict is
    decided")."""
    return verdict_mod.partial_line(s, ps, ci_text, _p_is)


def _clear(e: Any) -> bool:
    """A finite interval that excludes 0 and p < 0.05: what the verdict calls a clear relation."""
    return verdict_mod.state(e) == "clear"


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
        rho = f"Spearman ρ = {ci_text(s)}\n" + (f"(95% CI, {s.n_trials} trials)" if np.isfinite(
            s.ci_low) else f"({s.n_trials} trials: too few for a CI)")
    return (figs.study_figures(study, t, folder, color_by=color_by, rho_text=rho, seed=seed)
            + pareto_figures(study.final, study.tags, folder))


def metric_slug(name: str) -> str:
    """'fewshot/5w5s/ncc/acc' -> 'fewshot_5w5s_ncc'; 'cdnv/target' -> 'cdnv_target'."""
    return name.removesuffix("/acc").replace("/", "_")


def _headline_metrics(study: StudyRuns, t: dict[str, Any]) -> dict[str, float]:
    """Parent-run metrics: trial-level Spearman (+ CI) and partial Spearman of each CDNV split
    against each NCC accuracy, within-trial trend and bound summaries. NaNs are left out."""
    m: dict[str, float] = {analysis_key("n_trials"): float(len(study.usable)),
                           analysis_key("n_trials_total"): float(len(study.trials))}
    c = t["correlations"]
    sel = c[c["collapse"].map(lambda n: names.family_of(n) == "cdnv")
            & c["transfer"].map(lambda n: names.is_fewshot_acc(n)
                                 and names.split_fewshot_key(n)[1] == "ncc")
            & c["method"].isin(["spearman", "partial_spearman"])]
    for r in sel.itertuples():
        pair = f"{metric_slug(r.collapse)}__{metric_slug(r.transfer)}"
        m[analysis_key(r.method, pair)] = r.estimate
        m[analysis_key(f"{r.method}_ci_low", pair)] = r.ci_low
        m[analysis_key(f"{r.method}_ci_high", pair)] = r.ci_high
    ts = t["within_trial_summary"]
    if ts.get("n_trials"):
        m[analysis_key("within_trial", "median_rho")] = float(ts["median_rho"])
        m[analysis_key("within_trial", "frac_falls_while_rises")] = \
            ts["n_falls_while_rises"] / ts["n_trials"]
    for r in t["bound_summary"].itertuples():  # analysis/bound/<shape>/..., bound_cantelli/...
        family = names.family_of(names.bound_key(r.shape) if r.bound_name == "cdnv"
                                 else names.bound_cantelli_key(r.shape))
        for stat in ("holds_frac", "non_vacuous_frac", "median_ratio"):
            m[analysis_key(family, r.shape, stat)] = float(getattr(r, stat))
    m.update(layer_mod.layer_parent_metrics(t["layers"]))
    m.update(t["leaderboard_metrics"])
    return {k: float(v) for k, v in m.items() if v is not None and math.isfinite(v)}


def _log(study: StudyRuns, folder: Path, metrics: dict[str, float]) -> str:
    """Log the report folder and the headline metrics to the parent run; '' or the error."""
    return store.log_to_parent(study.tracking_uri, study.parent_run_id, metrics, folder,
                               "analysis")
