"""Does collapse on the source classes predict transfer to a new domain? A probe's analysis.

`nctune probe` logs `probe/<name>/<metric>` into each trial's run (step = the checkpoint's
epoch). Here the study's usual question is asked twice across trials, side by side: with the
in-domain few-shot accuracy (the study's own target classes) as the transfer target, and with
the probe's few-shot accuracy on the new domain. Every predictor gets the Spearman correlation
and the partial Spearman given source test accuracy, each with a 95% Fisher-z interval
over trials (`analysis.crosstrial.correlate.correlate`, the study report's own code path). A zoo
of pretrained models has no source classes: only the probe side is asked there (collapse on
the new domain against transfer to it, across models).

Orientation: lower CDNV (more collapse) going with higher accuracy is a negative correlation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import contract
from analysis.crosstrial import correlate as corr
from analysis.crosstrial import report_render, store
from analysis.crosstrial.probe_figures import md_table
from analysis.crosstrial.runs import StudyRuns, describe, load_study
from analysis.errors import InputError

METHODS = ("spearman", "partial_spearman")
# Source-side collapse: what the paper's question is about (measured before any probe).
SOURCE_PREDICTORS = (contract.collapse_key("cdnv", contract.SOURCE_TRAIN),
                     contract.collapse_key("cdnv", contract.SOURCE_TEST),
                     contract.collapse_key("nc1", contract.SOURCE_TRAIN))
IN_DOMAIN_TARGET_CDNV = contract.CDNV_TARGET
HEADLINE = SOURCE_PREDICTORS[0]  # source-train CDNV


@dataclass
class ProbeReport:
    """What `analyze_probe` produced: the report file, its verdict, the tables and metrics."""

    path: Path
    verdict: list[str]
    table: pd.DataFrame
    frame: pd.DataFrame
    metrics: dict[str, float] = field(default_factory=dict)
    log_error: str = ""


def probe_transfer(frame: pd.DataFrame, name: str) -> str | None:
    """The probe's few-shot accuracy column: 5w5s NCC if logged, else the first NCC shape."""
    prefix = contract.probe_key(name, "")
    cols = [c for c in frame.columns if c.startswith(prefix)
            and contract.is_fewshot_acc(c[len(prefix):])]
    best = contract.probe_key(name, contract.DEFAULT_SEARCH_METRIC)
    if best in cols:
        return best
    ncc = sorted(c for c in cols if f"/{contract.PRIMARY_CLASSIFIER}/" in c)
    return (ncc or sorted(cols) or [None])[0]


def probe_frame(study: StudyRuns, name: str) -> pd.DataFrame:
    """One row per probed trial at the last epoch it was probed at, with the trial's own
    metrics at that epoch (NaN for a zoo model, which has none)."""
    prefix = contract.probe_key(name, "")
    cols = [c for c in study.history.columns if c.startswith(prefix)]
    if not cols:
        raise InputError(f"--probe: study {study.name!r} holds no probe {name!r}; probes there: "
                         f"{', '.join(probe_names(study)) or 'none'} (run `nctune probe "
                         f"{study.name} --target DATASET` first)")
    h = study.history[study.history[cols].notna().any(axis=1)]
    ok = study.trials[study.trials["status"].isin(["completed", "stopped"])]["trial_index"]
    h = h[h["trial_index"].isin(ok)]
    rows = h.sort_values("epoch").groupby("trial_index").tail(1)
    meta = study.trials[["trial_index", "run_name"]]
    return meta.merge(rows, on="trial_index").reset_index(drop=True)


def probe_names(study: StudyRuns) -> list[str]:
    """Probe names with metrics in this study."""
    return sorted({c.split("/")[1] for c in study.history.columns
                   if c.startswith(contract.PROBE_PREFIX + "/")})


def target_side(frame: pd.DataFrame, prefix: str = "") -> list[str]:
    """Predictors measured on a target split (`prefix` = `probe/<name>/` for the probe's):
    CDNV and NC1, then the per-tap CDNV and the transferability estimators when logged."""
    cols = [prefix + contract.collapse_key(f, contract.TARGET) for f in ("cdnv", "nc1")]
    tail = "/" + contract.CDNV_TARGET
    cols += sorted(c for c in frame.columns if c.startswith(prefix + contract.LAYER_PREFIX + "/")
                   and c.endswith(tail) and c.count("/") == prefix.count("/") + 3)
    cols += sorted(c for c in frame.columns if c.startswith(prefix + contract.TRANSFER_PREFIX
                                                            + "/") and c.endswith("/target"))
    return [c for c in cols if c in frame and frame[c].notna().any()]


def correlation_rows(frame: pd.DataFrame, name: str, *, n_boot: int, seed: int) -> pd.DataFrame:
    """Every (predictor, domain, method): Spearman and partial Spearman with 95% intervals.

    Predictors: collapse on the source classes and source test accuracy (the baseline every
    predictor has to beat), then what was measured on each domain's own target; on the probe's
    side also the in-domain accuracy (does in-domain transfer rank transfer there?).
    """
    y_probe = probe_transfer(frame, name)
    y_home = contract.DEFAULT_SEARCH_METRIC if contract.DEFAULT_SEARCH_METRIC in frame else None
    control = frame[corr.CONTROL].to_numpy(float) if corr.CONTROL in frame else None
    source = [*SOURCE_PREDICTORS, corr.CONTROL]
    plan = [("in-domain", y_home, [*source, *target_side(frame)]),
            ("probe", y_probe, [*source, *target_side(frame, contract.probe_key(name, "")),
                                *([y_home] if y_home else [])])]
    rows = []
    for domain, y, predictors in plan:
        if y is None or y not in frame:
            continue
        for x in predictors:
            if x not in frame or frame[x].notna().sum() == 0:
                continue
            partial = control is not None and x != corr.CONTROL
            res = corr.correlate(frame[x].to_numpy(float), frame[y].to_numpy(float),
                                 groups=frame["trial_index"].to_numpy(), control=control,
                                 methods=METHODS if partial else METHODS[:1],
                                 n_boot=n_boot, seed=seed)
            rows += [{"domain": domain, "predictor": x, "transfer": y, **vars(e)}
                     for e in res.values()]
    return pd.DataFrame(rows, columns=["domain", "predictor", "transfer",
                                       *corr.Estimate.__annotations__])


def side_by_side(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """One row per predictor: in-domain and probe estimates with intervals, next to each other.

    A predictor measured on a target (`cdnv/target`, `layer/...`, `transfer/...`) shares its row
    with the same statistic measured on the probe's data set (`probe/<name>/...`): each side
    reads its own domain's target.
    """
    out: dict[str, dict[str, str]] = {}
    label = {"spearman": "Spearman", "partial_spearman": "partial (given source acc)"}
    for r in table.itertuples():
        cell = corr.cell(r) + f" (n={r.n_trials})"
        row = r.predictor.removeprefix(contract.probe_key(name, ""))
        out.setdefault(row, {})[f"{r.domain}: {label[r.method]}"] = cell
    frame = pd.DataFrame.from_dict(out, orient="index").fillna("")
    frame.index.name = "predictor"
    return frame.reset_index()


def pick(table: pd.DataFrame, domain: str, x: str, method: str = "spearman") -> pd.Series | None:
    """The row of one estimate, or None."""
    r = table[(table["domain"] == domain) & (table["predictor"] == x)
              & (table["method"] == method)]
    return r.iloc[0] if len(r) else None


def clear(e: pd.Series | None) -> bool:
    """A finite 95% interval that excludes 0 and p < 0.05."""
    return e is not None and bool(np.isfinite(e.ci_low) and (e.ci_low > 0 or e.ci_high < 0)
                                  and e.p_value < 0.05)


def ci(e: pd.Series, unit: str = "trials") -> str:
    """`−0.81 [−0.92, −0.62], p = 0.003` (no interval: says how many trials there were)."""
    if corr.cell(e).startswith("withheld"):
        return f"not estimated ({e.reason})"
    text = corr.format_ci(e.estimate, e.ci_low, e.ci_high)
    p = "n/a" if not np.isfinite(e.p_value) else ("< 0.001" if e.p_value < 0.001
                                                  else f"= {e.p_value:.3f}")
    extra = "" if np.isfinite(e.ci_low) else (f", no interval: {e.reason}" if e.reason else
                                              f", no interval with {e.n_trials} {unit}")
    return f"{text}, p {p}{extra}"


def verdict(frame: pd.DataFrame, table: pd.DataFrame, name: str, zoo: bool) -> list[str]:
    """Plain-language answer: does collapse on the source classes predict transfer there?"""
    y = probe_transfer(frame, name)
    yname = f"{describe(y[len(contract.probe_key(name, '')):])} on '{name}'" if y else ""
    n = len(frame)
    out = []
    if y is not None:
        acc = frame[y].to_numpy(float)
        out.append(f"{n} {'models' if zoo else 'trials'} probed; {yname}: mean "
                   f"{np.nanmean(acc):.3f} (range {np.nanmin(acc):.3f} to {np.nanmax(acc):.3f}).")
    if zoo:
        e = pick(table, "probe", contract.probe_key(name, IN_DOMAIN_TARGET_CDNV))
        if e is not None:
            how = ("went with" if clear(e) else "showed no clear association with")
            out.append(f"Across {n} models, CDNV on '{name}' {how} {yname}: Spearman "
                       f"{ci(e, 'models')}.")
        return out or [f"No probe '{name}' results to analyse."]
    home, away = pick(table, "in-domain", HEADLINE), pick(table, "probe", HEADLINE)
    if away is None or not np.isfinite(away.estimate):
        why = away.reason if away is not None else "no source-train CDNV or probe accuracy"
        return [*out, f"No cross-domain correlation is reported: {why}."]
    said = ("predicted" if clear(away) and away.estimate < 0 else
            "ran against" if clear(away) else "did not clearly predict")
    text = (f"Collapse on the source classes (source-train CDNV) {said} transfer to '{name}': "
            f"Spearman with {yname} {ci(away)}")
    if home is not None and np.isfinite(home.estimate):
        text += f"; in-domain it was {ci(home)}"
    out.append(text + " (95% intervals, Fisher z over trials; negative = more collapse, "
               "better transfer).")
    part = pick(table, "probe", HEADLINE, "partial_spearman")
    if part is not None and np.isfinite(part.estimate):
        out.append(f"At equal source test accuracy: partial Spearman {ci(part)}.")
    for x, what in ((contract.probe_key(name, IN_DOMAIN_TARGET_CDNV), f"CDNV measured on "
                     f"'{name}' itself"), (contract.DEFAULT_SEARCH_METRIC, "in-domain accuracy"),
                    (corr.CONTROL, "source test accuracy (the baseline)")):
        e = pick(table, "probe", x)
        if e is not None and np.isfinite(e.estimate):
            out.append(f"{what[0].upper() + what[1:]} ranked the trials' transfer to '{name}' "
                       f"with Spearman {ci(e)}.")
    return out


def analyze_probe(study_name: str, name: str, tracking_uri: str | None = None,
                  out_dir: Path | str | None = None, *, experiment: str | None = None,
                  n_boot: int = 2000, seed: int = 0, log_to_mlflow: bool = True) -> ProbeReport:
    """Load the study, answer the cross-domain question, write report.md/.html, CSVs and the
    figure into `out_dir`, and log them and the headline numbers to the parent run."""
    from analysis.crosstrial.probe_figures import probe_figure

    study = load_study(study_name, tracking_uri, experiment)
    frame = probe_frame(study, name)
    zoo = study.tags.get(store.TAG_KIND) == "zoo"
    out = Path(out_dir) if out_dir else store.report_dir(store.DEFAULT_ROOT, study_name, name)
    out.mkdir(parents=True, exist_ok=True)
    table = correlation_rows(frame, name, n_boot=n_boot, seed=seed)
    lines = verdict(frame, table, name, zoo)
    table.to_csv(out / "correlations.csv", index=False)
    frame.to_csv(out / "trials.csv", index=False)
    figure = probe_figure(frame, name, probe_transfer(frame, name), out, zoo=zoo)
    metrics = headline_metrics(table, name, len(frame))
    (out / "summary.json").write_text(json.dumps({"study": study_name, "probe": name,
                                                  "verdict": lines, "metrics": metrics},
                                                 indent=2, allow_nan=False))
    wide = side_by_side(table, name) if len(table) else pd.DataFrame()
    shown = frame[trial_columns(frame, name)]
    (out / "report.md").write_text(render_markdown(study_name, name, lines, wide, shown, figure),
                                   encoding="utf-8")
    path = out / "report.html"
    info = {"study": study_name, "probe": name, "tracking URI": study.tracking_uri,
            "parent run": study.parent_run_id, "trials": str(len(frame))}
    sections = [{"id": "correlations", "title": QUESTION, "lines": [explain(name)],
                 "figures": ["probe"], "tables": [
                     report_render.table("Spearman and partial Spearman, in-domain and "
                                         "on the probe", wide)]},
                {"id": "trials", "title": "Probed trials", "lines": [], "figures": [],
                 "tables": [report_render.table("Each probed trial at its final epoch", shown,
                                                collapsed=len(shown) > 20)]}]
    path.write_text(report_render.render_probe(study_name, name, info, lines, sections,
                                 [figure] if figure else []), encoding="utf-8")
    error = log_report(study, out, name, metrics) if log_to_mlflow else ""
    return ProbeReport(path, lines, table, frame, metrics, error)


def headline_metrics(table: pd.DataFrame, name: str, n: int) -> dict[str, float]:
    """Parent-run metrics `analysis/probe/<name>/<method>/<domain>/<predictor slug>` (+ CI)."""
    m = {contract.analysis_key("probe", name, "n_trials"): float(n)}
    for r in table.itertuples():
        slug = r.predictor.replace("/", "_")
        for part, value in (("", r.estimate), ("_ci_low", r.ci_low), ("_ci_high", r.ci_high)):
            m[contract.analysis_key("probe", name, r.method + part, r.domain, slug)] = value
    return {k: float(v) for k, v in m.items() if v is not None and math.isfinite(v)}


QUESTION = "Does collapse predict transfer, in-domain and on the probe's domain?"


def explain(name: str) -> str:
    """How to read the side-by-side table (the same sentence in Markdown and HTML)."""
    return (f"Spearman and partial Spearman with 95% Fisher-z intervals over trials, against "
            f"5-way 5-shot NCC accuracy on the study's own target classes (in-domain) and on "
            f"'{name}' (probe). Rows measured on a target (cdnv/target, layer/..., "
            f"transfer/...) read each side's own target; a negative CDNV correlation means "
            f"more collapse, better transfer.")


def trial_columns(frame: pd.DataFrame, name: str) -> list[str]:
    """The probed-trials table's columns: name, epoch, source and in-domain accuracy, and the
    probe's NCC accuracies and CDNVs (the rest is in trials.csv)."""
    return [c for c in frame.columns if c in ("run_name", "epoch", corr.CONTROL,
                                               contract.DEFAULT_SEARCH_METRIC, HEADLINE)
            or (c.startswith(contract.probe_key(name, "")) and
                (c.endswith("/ncc/acc") or "/cdnv/" in c))]


def render_markdown(study: str, name: str, lines: list[str], wide: pd.DataFrame,
                    shown: pd.DataFrame, figure: dict[str, str] | None) -> str:
    """The report in Markdown: verdict, side-by-side table, the figure, the probed trials."""
    parts = [f"# Probe '{name}' of study '{study}'", "", *[f"- {line}" for line in lines], "",
             f"## {QUESTION}", "", explain(name), "",
             md_table(wide) if len(wide) else "(no correlations: too few trials)", ""]
    if figure is not None:
        parts += [f"![{figure['caption']}]({figure['png']})", ""]
    parts += ["## Probed trials", "", md_table(shown), ""]
    return "\n".join(parts)


def log_report(study: StudyRuns, folder: Path, name: str, metrics: dict[str, float]) -> str:
    """Log the report folder and its numbers to the parent run; '' or the error."""
    return store.log_to_parent(study.tracking_uri, study.parent_run_id, metrics, folder,
                               f"analysis/probe-{name}")
