"""`nctune probe`: measure a study's checkpoints, or a zoo of timm models, on another domain.

    nctune probe demo --target digits                 # every completed trial of study demo
    nctune probe --models zoo.yaml --target digits    # timm models from local weights files

Every check runs before anything is logged (exit 2 and one line on bad input); then each trial
or model is a Ray task, a progress line shows how far it is, each result is logged as it comes
(`probe/<name>/<metric>`, step = epoch), and the probe's report answers whether collapse on the
source classes predicts transfer to the new domain.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from analysis import contract
from analysis.crosstrial import store
from analysis.errors import InputError

DEFAULT_ROOT = "nctune-runs"


def register(sub: argparse._SubParsersAction) -> None:
    """Add `nctune probe` to the CLI."""
    p = sub.add_parser(
        "probe", help="measure a study's checkpoints (or a zoo of timm models) on another data set",
        description="Load every completed trial's checkpoint (or each zoo model's weights), "
        "extract features of another data set's classes and measure collapse and few-shot "
        "transfer there. Logged as probe/NAME/<metric> into each trial's own MLflow run "
        "(step = epoch); a probe name is written once: the same name with other settings is "
        "refused, with the same settings an interrupted probe is completed.")
    p.add_argument("study", nargs="?", help="the study to probe (not with --models)")
    p.add_argument("--target", required=True, help="data set to probe on (see `nctune datasets "
                   "list`), e.g. digits")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="target option, e.g. --set dataset.target_per_class=30 (repeatable); "
                   "default: every class, 20 images each, at the backbone's image size")
    p.add_argument("--name", help="probe name in metric keys (default: the target's name)")
    p.add_argument("--epochs", choices=["final", "all"], default="final",
                   help="final: each trial's last checkpoint (default); all: every kept "
                   "checkpoint of an evaluated epoch")
    p.add_argument("--models", type=Path, help="a zoo YAML file: timm architectures with local "
                   "weights files; creates a study of its own")
    p.add_argument("--root", default=DEFAULT_ROOT, help="storage root (default: nctune-runs)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store of a --models zoo "
                   "(default: $MLFLOW_TRACKING_URI, else sqlite under --root)")
    p.add_argument("--address", help="join a running Ray cluster (default: $RAY_ADDRESS, "
                   "else a local Ray)")
    p.add_argument("--no-report", action="store_true", help="skip the probe's report")
    p.set_defaults(func=cmd_probe)


def cmd_probe(args: argparse.Namespace) -> int:
    """Dispatch to a study probe or a zoo probe."""
    if (args.study is None) == (args.models is None):
        raise InputError("probe: name a study (nctune probe STUDY --target D) or a zoo "
                         "(nctune probe --models zoo.yaml --target D), not both or neither")
    if args.models is not None:
        from study.probe.zoo import probe_zoo

        return probe_zoo(args)
    return probe_study(args)


def open_study(name: str, root: str) -> tuple[Any, Any]:
    """(StudyState, StudyConfig) of a study whose tracking store answers; one clear line when
    there is no such study or its checkpoints are not on a file system here."""
    from study.run.preflight import check_resumed_study
    from study.run.state import StudyState, study_folder

    folder = study_folder(name, root)
    state = StudyState.load(folder)
    if "://" in state.ray_path:
        raise InputError(f"study {name!r}: its checkpoints are in {state.ray_path}; a probe "
                         "reads them from a local or mounted folder (copy them there first)")
    return state, check_resumed_study(folder, state)


def probe_study(args: argparse.Namespace) -> int:
    """Check everything, then probe every completed trial and log into its own run."""
    from mlflow.tracking import MlflowClient

    from analysis.crosstrial.runs import load_study
    from study.probe.run import execute, prepare_target, say, target_config, trial_jobs

    state, cfg = open_study(args.study, args.root)
    study = load_study(state.name, state.tracking_uri, state.experiment)
    jobs, notes = trial_jobs(study, state.ray_path, args.epochs)
    if args.epochs == "all" and cfg.training.keep_checkpoints == "final":
        notes.append("the study kept each trial's newest 2 checkpoints only "
                     "(training.keep_checkpoints: final); those are probed")
    dataset, all_classes = target_config(args.target, args.overrides, cfg.dataset.image_size)
    name = contract.check_name_part("--name", args.name or args.target)
    target = prepare_target(name, dataset, all_classes, cfg.evaluation)
    folder = store.report_dir(args.root, state.name)
    failed = execute(MlflowClient(state.tracking_uri), state, target, jobs, epochs=args.epochs,
                     notes=notes, address=args.address,
                     report_to=None if args.no_report else folder / f"probe-{name}")
    say(f"\nIn MLflow: probe/{name}/<metric> in each trial's run (step = epoch). "
        f"Again: nctune analyze {shlex.quote(state.name)} --probe {name}")
    return 1 if failed else 0


