"""What keeps a study safe while its driver runs: one driver per study, a clean stop on Ctrl-C or
SIGTERM, safe study names, and tracking URIs whose credentials are never printed."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from filelock import FileLock, Timeout

from analysis.errors import InputError
from study.config import NAME_PATTERN, NAME_RULE

NAME_RE = re.compile(NAME_PATTERN)


def check_study_name(name: str) -> str:
    """A name given on the command line: a folder under <root>/studies, never a path out of it."""
    if not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise InputError(f"study name {name!r} is not allowed: {NAME_RULE}")
    return name


def redact(uri: str) -> str:
    """Hide credentials in URIs before printing (user:password@host -> ***@host)."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def without_credentials(uri: str) -> str:
    """`uri` without its user:password@ part (urllib cannot open a URL that has one)."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def redact_text(text: str, uri: str) -> str:
    """`text` with the credentials of `uri` (and any user:password@ part) masked."""
    parts = urlsplit(uri)
    for secret in (parts.password, parts.username):
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"(?<=://)[^/\s@:]+:[^/\s@]+@", "***@", text)


class StudyLock:
    """One driver per study: `resume` while the study still runs would log every step twice.

    A `flock` on <study folder>/.driver.lock: the kernel drops it when the process dies, even of
    SIGKILL, so a killed study can be resumed at once.
    """

    def __init__(self, folder: Path, name: str, timeout: float = 2.0) -> None:
        self.path = folder / ".driver.lock"
        self.name = name
        self.lock = FileLock(str(self.path), timeout=timeout)

    def __enter__(self) -> StudyLock:
        try:
            self.lock.acquire()
        except Timeout:
            raise InputError(f"study '{self.name}' is running in another process (its lock "
                             f"{self.path} is held); stop that driver first") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def driver_alive(folder: Path) -> bool:
    """Whether a driver holds the study's lock now (a SIGKILLed one does not)."""
    try:
        with StudyLock(folder, folder.name, timeout=0):
            return False
    except InputError:
        return True


class GracefulStop:
    """First Ctrl-C (or SIGTERM): ask Ray Tune to stop after saving its state; second: abort.

    Tune stops cleanly on SIGUSR1 (and on SIGINT, but then a signal that arrives before or after
    `fit` would go unnoticed): with Tune's own SIGINT handler off, ours records the stop and
    forwards SIGUSR1 while Tune runs, and raises KeyboardInterrupt otherwise.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: str | None = None
        self.previous: dict[int, Any] = {}
        self.env: str | None = None

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only; Tune's defaults apply there
        self.env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        self.previous = {s: signal.getsignal(s) for s in (*self.SIGNALS, signal.SIGUSR1)}
        for sig in self.SIGNALS:
            signal.signal(sig, self.handle)
        return self

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """First SIGINT/SIGTERM: ask Tune to stop gracefully (it snapshots); a second one raises
        KeyboardInterrupt."""
        tune_listens = signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN,
                                                                None)
        if self.received is not None or not tune_listens:
            self.received = self.received or signal.Signals(signum).name
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        print(f"\n{self.received}: stopping after saving the study's state "
              "(press Ctrl-C again to abort at once) ...", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGUSR1)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.previous:
            return
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if self.env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self.env
