"""The `nctune` command line.

Each sub-command lives in its own module that exposes `register(subparsers)`; this file only
collects them and turns bad input into one clear line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import signal
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from analysis.errors import InputError

# Modules that add sub-commands, in the order `nctune --help` lists them.
COMMAND_MODULES = [
    "study.commands.studies",
    "study.commands.metrics",
    "study.commands.datasets",
    "study.commands.cluster",
    "study.commands.analyze",
    "study.commands.probe",
    "study.commands.ui",
    "study.commands.dashboard",
]


def build_parser() -> argparse.ArgumentParser:
    """The `nctune` parser with every command module's sub-commands."""
    parser = argparse.ArgumentParser(
        prog="nctune",
        description="Hyperparameter studies of neural collapse and transfer (Ray Tune + Optuna "
        "+ MLflow).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; bad input is one line on stderr and exit 2, Ctrl-C exit 130."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        if not stdout_closed():
            raise  # a dropped socket, not the reader of our output: that must not pass quietly
        return quiet_broken_pipe()
    except InputError as exc:
        print(f"nctune: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"nctune: error: {format_validation_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nctune: interrupted", file=sys.stderr)
        return 130


def stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        gone = select.POLLERR | select.POLLHUP  # Linux reports POLLERR; other kernels may hang up
        return any(event & gone for _, event in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # captured output, not pollable, no poll()
        return False


def quiet_broken_pipe() -> int:
    """`nctune show demo | head`: the reader left; end quietly as ls or cat do (exit 128+13).

    SIGPIPE stays ignored (Python's default): with it restored, a write to a dropped socket, say
    to a tracking server that restarts mid-study, would kill the driver without a word.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
    os.close(devnull)
    return 128 + signal.SIGPIPE


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: the dotted field, what is wrong, the value given."""
    from study.config import explain_error

    lines = [explain_error(err) for err in exc.errors()]
    return "invalid config: " + ("\n  ".join(["", *lines]) if len(lines) > 1 else lines[0])


if __name__ == "__main__":
    sys.exit(main())
