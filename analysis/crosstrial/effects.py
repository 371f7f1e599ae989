"""What each searched hyperparameter does to target CDNV and to few-shot accuracy.

Three views, one table each:
    hyperparameter_effects  rank correlation of a numeric param with each target (CI over trials)
    per_value_table         mean and 95% CI per value, for params with few distinct values
                            (grid sweeps repeated over seeds, categorical, ints with repeats)
    importances             Optuna parameter importances on a study rebuilt from the runs:
                            fANOVA (fixed seed) and PED-ANOVA (Optuna 5's default), side by side
Collapse targets (CDNV, NC1) are treated on a log scale: means are geometric.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from analysis import contract as names
from analysis.crosstrial.correlate import MIN_TRIALS, correlate, format_ci, primary_transfer
from analysis.crosstrial.runs import StudyRuns, describe

MAX_GRID_VALUES = 12
COLLAPSE_TARGET = names.CDNV_TARGET

EVALUATORS: dict[str, Callable[[int], Any]] = {}
FANOVA_FULL_TRIALS = 256
FANOVA_LARGE_DEPTH = 8


def register_evaluator(name: str) -> Callable[[Callable[[int], Any]], Callable[[int], Any]]:
    """Decorator: add an Optuna importance evaluator factory (seed -> evaluator) under `name`."""
    def deco(fn: Callable[[int], Any]) -> Callable[[int], Any]:
        EVALUATORS[name] = fn
        return fn
    return deco


@register_evaluator("fanova")
def _fanova(seed: int) -> Any:
    from optuna.importance import FanovaImportanceEvaluator

    return FanovaImportanceEvaluator(seed=seed)


def fanova_for(n_trials: int, seed: int) -> Any:
    """fANOVA (Hutter et al., ICML 2014, as Optuna computes it) whose cost stops growing with the
    study: above FANOVA_FULL_TRIALS trials its trees stop at depth 8 (at most 256 leaves each),
    since the marginal-variance computation walks every leaf (88 s of a 1,000-trial `analyze`
    with full-depth trees, measured 2026-12-04). Smaller studies keep Optuna's defaults."""
    from optuna.importance import FanovaImportanceEvaluator

    if n_trials <= FANOVA_FULL_TRIALS:
        return FanovaImportanceEvaluator(seed=seed)
    return FanovaImportanceEvaluator(seed=seed, max_depth=FANOVA_LARGE_DEPTH)


@register_evaluator("ped_anova")
def _ped_anova(seed: int) -> Any:
    from optuna.importance import PedAnovaImportanceEvaluator

    return PedAnovaImportanceEvaluator()


def create_evaluator(name: str, seed: int = 0) -> Any:
    """A registered importance evaluator, seeded; an unknown name is a ValueError listing the known
    ones."""
    if name not in EVALUATORS:
        raise ValueError(f"evaluator: {name!r} is not one of {sorted(EVALUATORS)}")
    return EVALUATORS[name](seed)


def is_log_target(name: str) -> bool:
    """Collapse statistics (CDNV and NC1 families) vary over orders of magnitude: plot and fit them
    on a log scale."""
    return names.log_scale(name) and names.is_collapse_family(name)


def effect_targets(study: StudyRuns) -> list[str]:
    """Target CDNV and the primary few-shot accuracy, those that were logged."""
    out = [COLLAPSE_TARGET] if COLLAPSE_TARGET in study.final else []
    primary = primary_transfer(study)
    return out + ([primary] if primary else [])


def effect_params(study: StudyRuns) -> list[str]:
    """Searched params, without replication seeds (their spread is noise, not an effect)."""
    return [p for p in study.searched if p in study.final and not p.endswith("seed")]


def _is_numeric(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


def hyperparameter_effects(study: StudyRuns, *, n_boot: int = 2000,
                           seed: int = 0) -> pd.DataFrame:
    """Spearman of each numeric searched param with each target over usable trials; for
    categorical params a Kruskal-Wallis p-value instead."""
    frame = study.usable
    rows = []
    for p in effect_params(study):
        for t in effect_targets(study):
            sub = frame[frame[p].notna() & np.isfinite(frame[t].astype(float))]
            row: dict[str, Any] = {"param": p, "target": t, "n_trials": len(sub),
                                   "n_values": sub[p].astype(str).nunique()}
            if _is_numeric(frame[p]):
                est = correlate(sub[p].to_numpy(float), sub[t].to_numpy(float),
                                methods=("spearman",), n_boot=n_boot, seed=seed)["spearman"]
                row.update(kind="numeric", spearman=est.estimate, ci_low=est.ci_low,
                           ci_high=est.ci_high, p_value=est.p_value, reason=est.reason)
            else:
                groups = [g[t].to_numpy(float) for _, g in sub.groupby(sub[p].astype(str))]
                ok = len(groups) >= 2 and len(sub) >= MIN_TRIALS
                row.update(kind="categorical",
                           p_value=float(stats.kruskal(*groups).pvalue) if ok else np.nan,
                           reason="" if ok else "needs 2+ values and 3+ trials")
            rows.append(row)
    return pd.DataFrame(rows, columns=["param", "target", "kind", "n_trials", "n_values",
                                       "spearman", "ci_low", "ci_high", "p_value", "reason"])


def few_values(values: pd.Series, spec: dict[str, Any] | None = None,
               max_values: int = MAX_GRID_VALUES) -> bool:
    """Does a per-value summary suit this parameter? Categorical ones (grid sweeps included:
    the grid sampler takes categorical values) always; numeric ones when at most `max_values`
    values recur, two trials or more per value on average. A range sampled afresh per trial
    (every trial its own value) gets a trend over trials instead: per-value 'means' of one
    trial each would only join the points."""
    n_values = values.dropna().astype(str).nunique()
    if (spec or {}).get("type") == "categorical" or not _is_numeric(values):
        return True
    return n_values <= max_values and 2 * n_values <= values.notna().sum()


def per_value_table(study: StudyRuns, *, max_values: int = MAX_GRID_VALUES) -> pd.DataFrame:
    """Mean and t-based 95% CI of each target per value of each param with few values
    (`few_values`).

    The unit is the trial (typically one seed of one grid point); log targets get geometric
    means with the interval taken on log10 and mapped back.
    """
    frame = study.usable
    rows = []
    for p in effect_params(study):
        if not few_values(frame[p], study.space.get(p), max_values):
            continue
        for t in effect_targets(study):
            for value, g in frame.groupby(p, sort=True):
                v = g[t].to_numpy(float)
                v = v[np.isfinite(v) & ((v > 0) if is_log_target(t) else True)]
                if is_log_target(t):
                    v = np.log10(v)
                n = len(v)
                mean = float(v.mean()) if n else np.nan
                half = float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / np.sqrt(n)) \
                    if n >= 2 else np.nan
                lo, hi = mean - half, mean + half
                if is_log_target(t):
                    mean, lo, hi = 10 ** mean, 10 ** lo, 10 ** hi
                rows.append({"param": p, "target": t, "value": value, "n": n, "mean": mean,
                             "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=["param", "target", "value", "n", "mean", "ci_low",
                                       "ci_high"])


def log_scaled(values: pd.Series, spec: dict[str, Any] | None = None) -> bool:
    """Was this parameter searched on a log scale? The study's space.json says; without it,
    positive values spanning over a decade with a third or more below the geometric midpoint
    (about half for log-uniform draws, a few percent for uniform ones) are taken as log."""
    if spec:
        return spec.get("type") == "log_float" or (spec.get("type") == "int"
                                                    and bool(spec.get("log")))
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return False
    v = values.dropna().astype(float)
    if len(v) < 2 or v.min() <= 0 or v.max() / v.min() <= 10:
        return False
    return bool((v < np.sqrt(v.min() * v.max())).mean() > 1 / 3)


def _distributions(frame: pd.DataFrame, params: list[str],
                   space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Optuna distributions spanning the observed values, log-scaled where searched so."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for p in params:
        col = frame[p]
        if col.astype(str).nunique() < 2:
            continue  # constant here: nothing to attribute
        if _is_numeric(col):
            lo, hi = float(col.min()), float(col.max())
            log = log_scaled(col, space.get(p))
            if pd.api.types.is_integer_dtype(col):
                out[p] = IntDistribution(int(lo), int(hi), log=log)
            else:
                out[p] = FloatDistribution(lo, hi, log=log)
        else:
            out[p] = CategoricalDistribution(sorted({_plain(v) for v in col}, key=str))
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v if isinstance(v, str | int | float | bool) or v is None else str(v)


def importances(study: StudyRuns, *, evaluators: tuple[str, ...] = ("fanova", "ped_anova"),
                seed: int = 0) -> pd.DataFrame:
    """Parameter importances for each target from an Optuna study rebuilt from the runs.

    Returns one row per (target, evaluator, param) with a normalized importance and its rank,
    or one row per (target, evaluator) with `reason` when it cannot be computed.
    """
    import optuna
    from optuna.trial import create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    frame = study.usable
    params = effect_params(study)
    rows: list[dict[str, Any]] = []
    for t in effect_targets(study):
        sub = frame[np.isfinite(frame[t].astype(float))]
        dists = _distributions(sub, params, study.space)
        for ev in evaluators:
            base = {"target": t, "evaluator": ev}
            if len(sub) < MIN_TRIALS or not dists:
                why = f"{len(sub)} usable trial(s)" if len(sub) < MIN_TRIALS else \
                    "no searched parameter varies"
                rows.append({**base, "reason": why})
                continue
            ost = optuna.create_study(
                direction="minimize" if is_log_target(t) else "maximize")
            for rec in sub.to_dict("records"):
                ost.add_trial(create_trial(
                    params={p: _plain(rec[p]) for p in dists}, distributions=dists,
                    value=float(np.log10(rec[t]) if is_log_target(t) else rec[t])))
            try:
                evaluator = (fanova_for(len(sub), seed) if ev == "fanova"
                             else create_evaluator(ev, seed))
                imp = optuna.importance.get_param_importances(
                    ost, evaluator=evaluator, params=list(dists))
            except (ValueError, RuntimeError) as exc:
                rows.append({**base, "reason": f"{type(exc).__name__}: {exc}"})
                continue
            ranked = sorted(imp.items(), key=lambda kv: -kv[1])
            rows += [{**base, "param": p, "importance": float(v), "rank": i + 1}
                     for i, (p, v) in enumerate(ranked)]
    return pd.DataFrame(rows, columns=["target", "evaluator", "param", "importance", "rank",
                                       "reason"])


def importance_sentences(imp: pd.DataFrame, effects: pd.DataFrame, n_trials: int) -> list[str]:
    """Per target: the parameter fANOVA ranks first, its rank correlation, and whether PED-ANOVA
    agrees (it looks at the top 10% of trials only, so with few trials it is the shakier)."""
    out = []
    for target, g in imp.dropna(subset=["param"]).groupby("target", sort=False):
        top = {ev: r for ev, r in g[g["rank"] == 1].set_index("evaluator").iterrows()}
        if "fanova" not in top:
            continue
        p = top["fanova"].param
        line = (f"For {describe(target)}, {p} mattered most (fANOVA importance "
                f"{top['fanova'].importance:.2f})")
        if n_trials < 10:  # a forest fitted to a handful of points ranks almost at random
            line = f"With only {n_trials} trials, importances are rough. " + line
        e = effects[(effects["param"] == p) & (effects["target"] == target)]
        if len(e) and np.isfinite(e["spearman"].iloc[0]):
            r = e.iloc[0]
            line += f"; Spearman with it {format_ci(r.spearman, r.ci_low, r.ci_high)}"
        if "ped_anova" in top and top["ped_anova"].param != p:
            line += (f"; PED-ANOVA ranks {top['ped_anova'].param} first instead, from the top "
                     f"10% of trials only")
        out.append(line + ".")
    return out
