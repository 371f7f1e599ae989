"""How a study ends on the terminal: the trials table, the best trial, the report, what next.

The tables also serve `nctune show` (a study's trials) and `nctune ls` (the studies).
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

from analysis import contract as names
from analysis.crosstrial import store
from analysis.crosstrial.runs import StudyRuns
from analysis.errors import InputError
from study.run.guard import redact_text
from study.run.progress import say
from study.run.state import DEFAULT_ROOT, StudyState

SHOWN_METRICS = [
    (names.SOURCE_TEST_ACC, "src_acc"),
    (names.collapse_key("cdnv", names.SOURCE_TRAIN), "cdnv_src_tr"),
    (names.collapse_key("cdnv", names.SOURCE_TEST), "cdnv_src_te"),
    (names.CDNV_TARGET, "cdnv_tgt"),
    (names.fewshot_key("5w1s", names.PRIMARY_CLASSIFIER), "5w1s_ncc"),
    (names.fewshot_key("5w5s", names.PRIMARY_CLASSIFIER), "5w5s_ncc"),
]


def fmt(value: Any) -> str:
    """A table cell: '-' for missing, three significant digits for floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"
    return str(value)


def render(rows: list[list[str]], header: list[str]) -> str:
    """Left-aligned columns under a header and a rule of dashes."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def trials_table(study: StudyRuns, metric: str | list[str] | None = None) -> str:
    """One line per trial: index, status, searched params, epochs, final metrics."""
    final = study.final.sort_values("trial_index")
    metrics = [(k, label) for k, label in SHOWN_METRICS if k in final.columns]
    for extra in [metric] if isinstance(metric, str) else (metric or []):
        if extra in final.columns and extra not in dict(metrics):
            metrics.append((extra, extra.split("/", 1)[-1]))
    header = ["trial", "status", *study.searched, "epoch", *[label for _, label in metrics]]
    rows = []
    for _, r in final.iterrows():
        rows.append([f"t{int(r['trial_index']):03d}", str(r["status"]),
                     *[fmt(r.get(p)) for p in study.searched],
                     fmt(r.get("final_epoch")), *[fmt(r.get(k)) for k, _ in metrics]])
    return render(rows, header) if rows else "(no trials)"


def best_trial(study: StudyRuns, metric: str, mode: str) -> tuple[str, float] | None:
    """(label, value) of the usable trial with the best final `metric`, None if none has it."""
    final = study.final
    if metric not in final.columns:
        return None
    usable = final[final["usable"]].dropna(subset=[metric])
    if usable.empty:
        return None
    row = usable.loc[usable[metric].idxmax() if mode == "max" else usable[metric].idxmin()]
    return f"t{int(row['trial_index']):03d}", float(row[metric])


def pareto_lines(study: StudyRuns, metrics: list[str], modes: list[str]) -> list[str]:
    """`t003  fewshot/5w5s/ncc/acc=0.417  source/test_acc=0.29`, one per trial on the front."""
    from analysis.crosstrial.pareto import pareto_rows

    front = pareto_rows(study.final, metrics, modes)
    return [f"t{int(r['trial_index']):03d}  " + "  ".join(f"{m}={r[m]:.4f}" for m in metrics)
            for _, r in front.iterrows()]


def summarize(state: StudyState) -> tuple[str, float] | None:
    """Print the trials table and the best trial (returned); a multi-objective study prints its
    Pareto set instead and returns None."""
    from mlflow.exceptions import MlflowException

    from analysis.crosstrial.runs import load_study

    try:
        study = load_study(state.name, state.tracking_uri, state.experiment)
    except (InputError, MlflowException) as exc:
        say(f"  (no summary: {redact_text(str(exc), state.tracking_uri)})")
        return None
    say("\n" + trials_table(study, state.metrics or state.metric))
    if len(state.metrics) > 1:
        front = pareto_lines(study, state.metrics, state.modes)
        say(f"\nPareto set ({len(front)} of {len(study.final)} trials; "
            + ", ".join(f"{mode} {m}" for m, mode in zip(state.metrics, state.modes,
                                                          strict=True)) + "):")
        for line in front:
            say(f"  {line}")
        for problem in study.problems:
            say(f"  note: {problem}")
        return None
    best = best_trial(study, state.metric, state.mode)
    if best:
        say(f"\nBest: {best[0]} with {state.metric} = {best[1]:.4f}")
    for problem in study.problems:
        say(f"  note: {problem}")
    return best


def write_report(state: StudyState, folder: Path, best: tuple[str, float] | None) -> None:
    """The analysis report; its first verdict line and the best trial become the headline in
    the parent run's description (what the MLflow UI shows first)."""
    from mlflow.exceptions import MlflowException

    from analysis.crosstrial.report import analyze

    try:
        report = analyze(state.name, state.tracking_uri, folder / "report",
                         experiment=state.experiment)
    except (InputError, MlflowException) as exc:
        say(f"  no report: {redact_text(str(exc), state.tracking_uri)}")
        return
    say("\n" + "\n".join(report.verdict[:report.answer]) if report.verdict else "")
    say(f"Report: {report.path}")
    headline = [f"Best: {best[0]} with {state.metric} = {best[1]:.4f}."] if best else []
    set_headline(state, headline + report.verdict[:report.answer])


def set_headline(state: StudyState, lines: list[str]) -> None:
    """Parent run description = the study's question + its result, in Markdown."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(state.tracking_uri)
    run = store.retry(lambda: client.get_run(state.parent_run_id))
    question = run.data.tags.get(store.TAG_QUESTION, run.data.tags.get("mlflow.note.content", ""))
    text = question + ("\n\n**Result.** " + " ".join(lines) if lines else "")
    store.retry(lambda: client.set_tag(state.parent_run_id, "mlflow.note.content", text))


def root_option(folder: Path) -> str:
    """` --root PATH` when the study is not under the default root, else ''."""
    root = folder.parent.parent
    return "" if root == Path(DEFAULT_ROOT).resolve() else f" --root {shlex.quote(str(root))}"


def resume_command(folder: Path) -> str:
    """The command that resumes the study in `folder`."""
    return f"nctune resume {folder.name}{root_option(folder)}"


def say_next(state: StudyState, folder: Path) -> None:
    """The last lines of a completed study: where its table, report and UI are."""
    opt = root_option(folder)
    say("\nNext:")
    say(f"  nctune show {state.name}{opt}        # this table again")
    if (folder / "report" / "report.html").exists():
        say(f"  open {folder / 'report' / 'report.html'}   # does collapse predict transfer?")
    else:
        say(f"  nctune analyze {state.name}   # does collapse predict transfer? (HTML report)")
    say(f"  nctune ui {state.name}{opt}          # compare the trials in the MLflow UI")
