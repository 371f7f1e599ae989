"""`nctune run`, `resume`, `ls`, `show`: the study commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.crosstrial import store
from analysis.crosstrial.store import DEFAULT_ROOT
from analysis.errors import InputError

if TYPE_CHECKING:
    from study.run.state import StudyState


def register(sub: argparse._SubParsersAction) -> None:
    """Add `run`, `resume`, `ls`, `show` and `presets` to the CLI."""
    p = sub.add_parser("run", help="run a study from a preset or a YAML file",
                       description="Run a study. Presets: see `nctune presets`.")
    p.add_argument("preset", nargs="?", default="demo", help="preset name or YAML file "
                   "(default: demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set training.lr=0.1 (repeatable)")
    p.add_argument("--name", help="study name (default: the preset's)")
    p.add_argument("--address", help="join a running Ray cluster (default: $RAY_ADDRESS, "
                   "else a local Ray)")
    p.add_argument("--no-report", action="store_true", help="skip the analysis report")
    p.add_argument("--dashboard", action="store_true", help="start the local Ray with its "
                   "dashboard (on 127.0.0.1; off by default)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and print the resolved config; start nothing")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="resume a stopped or killed study where it stopped")
    p.add_argument("name")
    p.add_argument("--root", default=DEFAULT_ROOT, help="storage root (default: nctune-runs)")
    p.add_argument("--address", help="join a running Ray cluster (default: $RAY_ADDRESS, "
                   "else a local Ray)")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--dashboard", action="store_true")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("ls", help="list studies with their status and best trial")
    p.add_argument("--root", default=DEFAULT_ROOT)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("show", help="a table of a study's trials")
    p.add_argument("name")
    p.add_argument("--root", default=DEFAULT_ROOT)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("presets", help="list the presets that ship with nctune")
    p.set_defaults(func=cmd_presets)


def cmd_run(args: argparse.Namespace) -> int:
    """`nctune run`: load and validate the config, then hand it to study.run.driver.run_study."""
    from study.presets import dump_config, load_study_config

    cfg = load_study_config(args.preset, args.overrides, args.name)
    if args.dry_run:
        from study.run.guard import redact_text

        print(redact_text(dump_config(cfg), cfg.tracking_uri()), end="")
        return 0
    from study.run.driver import run_study

    state = run_study(cfg, address=args.address, report=not args.no_report,
                      dashboard=args.dashboard)
    return exit_code(state)


def cmd_resume(args: argparse.Namespace) -> int:
    """`nctune resume NAME`: continue a stopped or killed study."""
    from study.run.driver import resume_study

    state = resume_study(args.name, args.root, address=args.address,
                         report=not args.no_report, dashboard=args.dashboard)
    return exit_code(state)


def exit_code(state: StudyState) -> int:
    """0 completed; 130 stopped by Ctrl-C/SIGTERM (the shell convention); 1 otherwise."""
    if state.status == "completed":
        return 0
    return 130 if state.stop_reason == "interrupted" else 1


def cmd_ls(args: argparse.Namespace) -> int:
    """`nctune ls`: the studies under a root, with status and best trial."""
    from study.run.guard import driver_alive
    from study.run.state import known_studies
    from study.run.summary import render

    rows = []
    for name in known_studies(args.root):
        folder = store.study_dir(args.root, name)
        state = json.loads((folder / store.STATE_FILE).read_text())
        status = state["status"] + (f" ({state['stop_reason']})" if state.get("stop_reason")
                                    else "")
        if state["status"] == "running" and not driver_alive(folder):
            status = "running (no driver: resume it)"  # killed, or its machine went down
        rows.append([name, status, str(state["num_samples"]), state["created"],
                     best_of(name, state)])
    if not rows:
        print(f"No studies under {Path(args.root).resolve()}. Start one with `nctune run`.")
        return 0
    print(render(rows, ["study", "status", "trials", "created", "best"]))
    return 0


def best_of(name: str, state: dict) -> str:
    """The best trial of a study for `ls`, '?' when its store cannot be read."""
    from analysis.crosstrial.runs import load_study
    from study.run.summary import best_trial

    try:
        study = load_study(name, state["tracking_uri"], state["experiment"])
    except InputError:
        return "?"
    if len(state.get("metrics", [])) > 1:
        from analysis.crosstrial.pareto import pareto_rows

        front = pareto_rows(study.final, state["metrics"], state["modes"])
        labels = [f"t{int(i):03d}" for i in front["trial_index"]]
        return f"Pareto set {', '.join(labels)}" if labels else "-"
    best = best_trial(study, state["metric"], state["mode"])
    return f"{best[0]} {state['metric']}={best[1]:.3f}" if best else "-"


def cmd_show(args: argparse.Namespace) -> int:
    """`nctune show NAME`: a table of the study's trials and its best."""
    from analysis.crosstrial.runs import load_study
    from study.run.state import study_folder
    from study.run.summary import best_trial, trials_table

    folder = study_folder(args.name, args.root)
    state = json.loads((folder / store.STATE_FILE).read_text())
    study = load_study(args.name, state["tracking_uri"], state["experiment"])
    print(f"Study '{args.name}' ({state['status']}, {len(study.final)} of "
          f"{state['num_samples']} trials logged)")
    print(trials_table(study, state.get("metrics") or state["metric"]))
    if len(state.get("metrics", [])) > 1:
        from study.run.summary import pareto_lines

        print("\nPareto set:")
        for line in pareto_lines(study, state["metrics"], state["modes"]):
            print(f"  {line}")
    best = None if len(state.get("metrics", [])) > 1 else best_trial(study, state["metric"],
                                                                     state["mode"])
    if best:
        print(f"\nBest: {best[0]} with {state['metric']} = {best[1]:.4f}")
    for problem in study.problems:
        print(f"  note: {problem}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    """`nctune presets`: each preset with the first line of its description."""
    from study.presets import list_presets, read_preset

    for name in list_presets():
        desc = str(read_preset(name).get("description", "")).strip().splitlines()
        print(f"{name:22s} {desc[0] if desc else ''}")
    return 0
