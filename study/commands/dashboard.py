"""`nctune dashboard [NAME]`: optuna-dashboard on a study's Optuna storage, on 127.0.0.1.

The Optuna view of a study (history, parallel coordinates, importances, the Pareto front of a
multi-objective study), next to the MLflow view `nctune ui` opens. The server runs as a child
process in its own session, as `nctune ui` runs MLflow's, and Ctrl-C stops it in order. The
storage URL reaches it through the environment, not its command line, where `ps` would show a
password.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from analysis.crosstrial.store import DEFAULT_ROOT
from analysis.errors import InputError

DEFAULT_PORT = 8080
STORAGE_ENV = "NCTUNE_OPTUNA_STORAGE"
SERVE = ("import os, sys, optuna_dashboard; "
         f"optuna_dashboard.run_server(os.environ['{STORAGE_ENV}'], host=sys.argv[1], "
         "port=int(sys.argv[2]))")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `dashboard` to the CLI."""
    p = sub.add_parser(
        "dashboard", help="open a study in optuna-dashboard (on 127.0.0.1; Ctrl-C stops it)",
        description="Start optuna-dashboard on a study's Optuna storage, bound to 127.0.0.1, "
        "and print the link to the study. Ctrl-C stops the server.")
    p.add_argument("name", nargs="?", help="study name (default: every study in the default "
                   "storage under --root)")
    p.add_argument("--port", type=int, default=None,
                   help=f"port to serve on (default: {DEFAULT_PORT} if free, else any free one)")
    p.add_argument("--root", default=DEFAULT_ROOT, help="storage root (default: nctune-runs)")
    p.set_defaults(func=cmd_dashboard)


def find_storage(name: str | None, root: str) -> tuple[str, int | None]:
    """The storage URL and the Optuna study id of `name` (None: the root's default storage)."""
    from study.run.optuna_store import open_storage
    from study.run.state import StudyState, study_folder

    if name is None:
        url = f"sqlite:///{Path(root).expanduser().resolve() / 'optuna.db'}"
        if not Path(url[len("sqlite:///"):]).is_file():
            raise InputError(f"dashboard: no Optuna storage at {url}; name a study, or run one")
        return url, None
    state = StudyState.load(study_folder(name, root))
    if not state.optuna_storage:
        raise InputError(f"study '{name}' was run before nctune kept an Optuna storage; "
                         "run it again to see it in optuna-dashboard")
    storage = open_storage(state.optuna_storage)
    try:
        return state.optuna_storage, storage.get_study_id_from_name(name)
    except KeyError:
        raise InputError(f"study '{name}': its Optuna storage holds no study of that name "
                         "(no trial was proposed yet)") from None


def cmd_dashboard(args: argparse.Namespace) -> int:
    """`nctune dashboard [NAME]`: serve the study's Optuna storage until Ctrl-C."""
    from study.commands.ui import (
        HOST,
        ServerError,
        interruptible,
        log_path,
        pick_port,
        say,
        stop,
        wait_until_up,
    )
    from study.run.guard import redact

    url, study_id = find_storage(args.name, args.root)
    port = pick_port(args.port, DEFAULT_PORT)
    base = f"http://{HOST}:{port}"
    log = log_path(args.root, "optuna-dashboard.log")
    env = {**os.environ, STORAGE_ENV: url}
    say(f"Starting optuna-dashboard on {redact(url)} (server log: {log}) ...")
    with interruptible(), open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", SERVE, HOST, str(port)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        try:
            wait_until_up(proc, f"{base}/api/meta", log, server="optuna-dashboard")
            say(f"optuna-dashboard: {base}/dashboard")
            if study_id is not None:
                say(f"  study '{args.name}': {base}/dashboard/studies/{study_id}")
            say("Press Ctrl-C to stop.")
            code = proc.wait()
            print(f"nctune: error: optuna-dashboard stopped (status {code}); see {log}",
                  file=sys.stderr)
            return 1
        except ServerError as exc:
            print(f"nctune: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            say("\nStopping optuna-dashboard ...")
            stop(proc)
            say("Stopped.")
            return 0
        finally:
            stop(proc)
