"""The Python entry point for notebooks: a study's runs, correlations and leaderboard as frames.

    from analysis import load_study, correlations, leaderboard
    study = load_study("demo")     # nctune-runs/mlflow.db, or $MLFLOW_TRACKING_URI
    study.final                    # one row per trial at its final evaluated epoch

Each function is a thin, documented door onto the code `nctune analyze` runs, so a notebook's
numbers are the report's numbers: the same loading, the same intervals, the same seeds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from analysis.crosstrial.report import Report
    from analysis.crosstrial.runs import StudyRuns

__all__ = ["analyze", "correlations", "leaderboard", "load_study"]


def load_study(name: str, tracking_uri: str | None = None,
               experiment: str | None = None) -> StudyRuns:
    """A study as pandas frames, read from its MLflow store.

    Args:
        name: the study's name (`nctune ls` lists them).
        tracking_uri: the MLflow store; default $MLFLOW_TRACKING_URI, else nctune-runs/mlflow.db.
        experiment: the MLflow experiment; default "nctune".

    Returns:
        StudyRuns with `trials` (one row per trial: params, status, flags), `history` (one row
        per trial and evaluated epoch, one column per metric), `final` (each trial's final
        evaluated epoch), `usable` (the final rows the analysis uses) and `problems`.

    Raises:
        analysis.errors.InputError: the store cannot be read or holds no such study.
    """
    from analysis.crosstrial.runs import load_study as load

    return load(name, tracking_uri, experiment)


def correlations(study: StudyRuns, *, level: str = "trial", n_boot: int = 2000,
                 seed: int = 0) -> pd.DataFrame:
    """Every (collapse metric, few-shot accuracy, method) with its estimate and interval.

    The table the report's correlation section prints: Spearman, Kendall, Pearson on logs and the
    partial Spearman given source accuracy, each with its 95% interval, p-value, and the reason
    when it could not be estimated.

    Args:
        study: from `load_study`.
        level: "trial" (each trial's final epoch) or "epoch" (every evaluated epoch,
            resampled by trial).
        n_boot: bootstrap replicates.
        seed: the bootstrap's seed (the report's default is 0).
    """
    from analysis.crosstrial.correlate import correlation_table

    return correlation_table(study, level=level, n_boot=n_boot, seed=seed)


def leaderboard(study: StudyRuns, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Every candidate predictor of transfer against every few-shot accuracy, oriented.

    Candidates are the collapse statistics, the transferability estimators and source accuracy
    (the baseline); one row per (candidate, accuracy, method) with estimate and interval.

    Args:
        study: from `load_study`.
        n_boot: bootstrap replicates.
        seed: the bootstrap's seed.
    """
    from analysis.crosstrial.leaderboard import leaderboard_table

    table, _ = leaderboard_table(study.usable, n_boot=n_boot, seed=seed)
    return table


def analyze(name: str, tracking_uri: str | None = None, **options: object) -> Report:
    """Write the study's report as `nctune analyze` does; returns the Report (path, verdict,
    tables). Options are `analysis.crosstrial.report.analyze`'s keyword arguments."""
    from analysis.crosstrial.report import analyze as run

    return run(name, tracking_uri, **options)  # type: ignore[arg-type]
