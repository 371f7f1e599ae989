"""A compact progress line for a running study (Ray 2.60 ignores custom progress reporters).

Prints at most every `interval` seconds, and at every trial that ends:
    [01:42] 3/8 finished · 2 running (t004 ep 3/6, t005 ep 1/8) · 0 failed · 0 diverged
            · best fewshot/5w5s/ncc/acc 0.612 (t002)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from ray.tune import Callback

from study.tracking import trial_error


class ProgressPrinter(Callback):
    """What a user watching the terminal needs: counts, each running trial's epoch, the best."""

    def __init__(self, total: int, metric: str, mode: str, *, interval: float = 10.0,
                 stream: TextIO | None = None,
                 label_of: Callable[[str], str] | None = None) -> None:
        self.total = total
        self.metric = metric
        self.mode = mode
        self.interval = interval
        self.stream = stream  # None: sys.stdout at write time (the callback is pickled)
        self.start = time.monotonic()
        self.last_print = 0.0
        self.epochs: dict[str, tuple[int, int]] = {}
        self.ended: dict[str, str] = {}
        self.latest: dict[str, tuple[str, float]] = {}  # trial -> (label, latest metric value)
        self.labels: dict[str, str] = {}
        self.label_of = label_of  # the tracker's numbering, so terminal and MLflow agree

    def label(self, trial: Any) -> str:
        if self.label_of is not None:
            return self.label_of(trial.trial_id)
        if trial.trial_id not in self.labels:
            self.labels[trial.trial_id] = f"t{len(self.labels) + 1:03d}"
        return self.labels[trial.trial_id]

    def setup(self, stop: Any = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        # Called when Tuner.fit starts, also after a resume (this object was unpickled then).
        self.start = time.monotonic()
        self.last_print = 0.0

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.label(trial)
        self.epochs.setdefault(trial.trial_id, (0, int(trial.config.get("epochs", 0))))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        epoch = int(result.get("epoch", 0))
        self.epochs[trial.trial_id] = (epoch, int(trial.config.get("epochs", 0)))
        value = result.get(self.metric)
        if isinstance(value, int | float) and not isinstance(value, bool):
            self.latest[trial.trial_id] = (self.label(trial), float(value))
        status = result.get("trial_status")
        if status in ("diverged", "failed"):
            self.ended[trial.trial_id] = str(status)
        if status == "failed":
            self.write(f"  {self.label(trial)} failed: {last_line(result.get('error'))}")
        self.maybe_print(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.setdefault(trial.trial_id, "done")
        self.maybe_print(trials, force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended[trial.trial_id] = "failed"
        self.write(f"  {self.label(trial)} failed: {last_line(trial_error(trial))}")
        self.maybe_print(trials, force=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.maybe_print(trials)

    def maybe_print(self, trials: list, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_print >= self.interval:
            self.last_print = now
            self.write(self.line(trials))

    def line(self, trials: list) -> str:
        running = [t for t in trials if t.status == "RUNNING" and t.trial_id not in self.ended]
        pending = sum(1 for t in trials if t.status == "PENDING")
        # After a resume, trials that ended before it are known only by their Tune status.
        ended = {t.trial_id: ("failed" if t.status == "ERROR" else "done") for t in trials
                 if t.status in ("TERMINATED", "ERROR")}
        ended.update(self.ended)
        counts = {s: sum(1 for v in ended.values() if v == s)
                  for s in ("done", "failed", "diverged")}
        finished = len(ended)
        shown = ", ".join(
            f"{self.label(t)} ep {self.epochs.get(t.trial_id, (0, 0))[0]}/"
            f"{self.epochs.get(t.trial_id, (0, 0))[1]}" for t in running[:4]
        )
        elapsed = int(time.monotonic() - self.start)
        text = (f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {finished}/{self.total} finished · "
                f"{len(running)} running" + (f" ({shown})" if shown else "") +
                (f" · {pending} starting" if pending else "") +
                f" · {counts['failed']} failed · {counts['diverged']} diverged")
        best = self.best()
        if best:
            text += f" · best {self.metric} {best[1]:.3f} ({best[0]})"
        return text

    def best(self) -> tuple[str, float] | None:
        """The best trial by its latest value: the same rule as the final summary's "Best"."""
        if not self.latest:
            return None
        pick = max if self.mode == "max" else min
        return pick(self.latest.values(), key=lambda item: item[1])

    def write(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)


def last_line(text: object) -> str:
    """The line of an error trace that says what went wrong (its last), shortened."""
    lines = str(text or "").strip().splitlines()
    return lines[-1][:200] if lines else "unknown error"
