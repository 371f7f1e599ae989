"""Where a study's runs are: the one tracking-URI resolver, and a fast check that the store answers.

Both the driver (study.config) and every reader (load_study, `nctune ui`) resolve URIs here, so a
study is read from exactly the store it was written to.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from analysis.errors import InputError

SQLITE = "sqlite:///"
DEFAULT_ROOT = "nctune-runs"


def resolve_tracking_uri(uri: str | None = None, root: Path | str = DEFAULT_ROOT) -> str:
    """The tracking URI to use: `uri`, else $MLFLOW_TRACKING_URI, else `<root>/mlflow.db`.

    A relative sqlite path is made absolute against the current folder: trials chdir into their
    own folders and Ray jobs run elsewhere, so `sqlite:///runs.db` must mean one file for all.

    Args:
        uri: the configured URI (None: not configured).
        root: the storage root whose `mlflow.db` is the default store.
    """
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not chosen:
        return f"{SQLITE}{Path(root).expanduser().resolve() / 'mlflow.db'}"
    if chosen.startswith(SQLITE) and not chosen.startswith(SQLITE + "/"):
        return SQLITE + str(Path(chosen[len(SQLITE):]).resolve())
    return chosen


def check_tracking_uri(uri: str, *, must_exist: bool = False, timeout_s: float = 3.0) -> None:
    """Fail fast with an InputError when the store behind `uri` cannot be reached.

    MLflow's REST client retries for minutes against a dead server, and its sqlite store
    silently creates an empty database at a mistyped path; both are worse than one clear line.

    Args:
        uri: the tracking URI.
        must_exist: a local store (sqlite file, mlruns folder) must already exist, as it must
            for reading a study; a writer (a new study) may create it.
        timeout_s: how long to wait for a tracking server to answer.
    """
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme.startswith("sqlite"):
        path = uri.split(":///", 1)[1] if ":///" in uri else ""
        if must_exist and (path in ("", ":memory:") or not Path(path).is_file()):
            raise InputError(
                f"tracking URI {uri!r}: no MLflow database at {path or '(no path)'!r}; "
                "pass --tracking-uri or set MLFLOW_TRACKING_URI to the store the study wrote"
            )
    elif scheme in ("http", "https"):
        probe = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(probe, timeout=timeout_s):
                pass
        except urllib.error.HTTPError:
            pass  # the server answered; an older server may just lack /health
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InputError(
                f"tracking URI {uri!r}: no MLflow server answers ({reason}); "
                "start it or pass the right --tracking-uri"
            ) from None
    elif scheme in ("", "file") and must_exist:
        path = parsed.path if scheme == "file" else uri
        if not Path(path).is_dir():
            raise InputError(f"tracking URI {uri!r}: no MLflow store folder at {path!r}")
