"""`nctune run`, `resume`, `ls`, `show`: the study commands."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a study from a preset or YAML file")
    p.add_argument("preset", nargs="?", default="demo", help="preset name or YAML file")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    print(
        "nctune: the study driver is not written yet; this command will run the "
        f"'{args.preset}' study once it exists."
    )
    return 0
