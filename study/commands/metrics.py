"""`nctune metrics`: every metric name a trial of a config reports, from the metric contract.

Users need the list to pick `search.metric` and to find a curve in the MLflow UI; the names come
from `analysis.contract.trial_metrics`, the same function the config check and the tests use.
"""

from __future__ import annotations

import argparse

GROUP_TITLES = {
    "training": "pretraining, every epoch",
    "source": "source classes, every evaluated epoch",
    "collapse": "collapse of the penultimate features",
    "fewshot": "few-shot accuracy on the target classes",
    "bound": "bounds on the NCC error (the CDNV constant is nctune's derivation)",
    "layers": "per layer (evaluation.layers)",
    "transfer": "transferability estimators on the target features",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add `nctune metrics` to the CLI."""
    p = sub.add_parser("metrics", help="list the metric names a trial of a config reports",
                       description="List every metric a trial of this config reports, grouped, "
                       "one per line: what `search.metric` may name and what MLflow will hold.")
    p.add_argument("preset", nargs="?", default="demo",
                   help="preset name or YAML file (default: demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set evaluation.shapes=[5w1s]")
    p.add_argument("--plain", action="store_true",
                   help="names only, no group headings (for scripts)")
    p.add_argument("--describe", action="store_true",
                   help="beside each name: what it is, which way is better, its paper")
    p.set_defaults(func=cmd_metrics)


def cmd_metrics(args: argparse.Namespace) -> int:
    """Print the grouped names; the search metric is marked."""
    from analysis.contract import trial_metrics
    from study.presets import load_study_config

    cfg = load_study_config(args.preset, args.overrides)
    groups = trial_metrics(cfg.metric_spec())
    if args.plain:
        print("\n".join(name for names in groups.values() for name in names))
        return 0
    total = sum(len(names) for names in groups.values())
    print(f"{total} metrics per evaluated epoch of a trial of '{cfg.name}' "
          f"(* = search.metric):")
    for group, names in groups.items():
        print(f"\n# {group}: {GROUP_TITLES.get(group, group)}")
        for name in names:
            mark = "  *" if name == cfg.search.metric else ""
            print(f"{name}{mark}{described(name) if args.describe else ''}")
    return 0


def described(name: str) -> str:
    """`  — target CDNV; lower is better; Galanti et al. ...` from the metric's descriptor."""
    from analysis.contract import describe, descriptor

    d = descriptor(name)
    if d is None:
        return ""
    way = {1: "higher is better", -1: "lower is better", 0: ""}[d.direction]
    return "  — " + "; ".join(part for part in (describe(name), way, d.citation) if part)
