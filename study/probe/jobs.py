"""Ray tasks for `nctune probe`: one task per trial (or zoo model), a progress line, the results.

Every job is a Ray task, so a study's trials are probed in parallel (one CPU each, and a share
of a GPU when the cluster has one). The driver alone writes to MLflow, as it does for a study:
`run_jobs` yields each result as its task ends, and the caller logs it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator

from analysis.measure.fewshot_episodes import EpisodeBank
from trainables.config import EvaluationConfig
from trainables.data import Split
from trainables.probe import ProbeJob, ProbeResult, first_line

# Tasks that share one GPU: a probe job is one forward pass over a few hundred images per
# checkpoint, far too small to fill a GPU alone.
TASKS_PER_GPU = 4


def _task(job: ProbeJob, target: Split, banks: dict[str, EpisodeBank], ev: EvaluationConfig,
          use_gpu: bool) -> ProbeResult:
    """What runs in the Ray worker (imports inside: the worker has only what it needs)."""
    import torch

    from trainables.probe import run_job

    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    return run_job(job, target, banks, ev, device, threads=1)


def gpus_per_task() -> float:
    """A GPU share per task when the Ray cluster has GPUs, else none."""
    import ray

    return 1.0 / TASKS_PER_GPU if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


class ProbeProgress:
    """`[00:12] 3/8 probed · 2 in progress (t004, t005) · 0 failed · best <metric> 0.612 (t002)`,
    at most every `interval` seconds and whenever a job ends: the line `nctune run` prints."""

    def __init__(self, total: int, metric: str, *, shown_as: str = "",
                 interval: float = 10.0) -> None:
        self.total, self.metric, self.interval = total, metric, interval
        self.shown_as = shown_as or metric  # the logged name (probe/<name>/...)
        self.start = time.monotonic()
        self.last = 0.0
        self.done = 0
        self.failed = 0
        self.best: tuple[str, float] | None = None

    def ended(self, result: ProbeResult | None, label: str, error: str = "") -> None:
        """Count a finished job; remember the best value of the metric at its last epoch."""
        if result is None:
            self.failed += 1
            self.write(f"  {label} failed: {error}")
            return
        self.done += 1
        final = result.metrics[max(result.metrics)] if result.metrics else {}
        value = final.get(self.metric)
        if value is not None and (self.best is None or value > self.best[1]):
            self.best = (label, float(value))

    def maybe_print(self, running: list[str], force: bool = False) -> None:
        """Print the line when `interval` has passed since the last one (or when forced)."""
        now = time.monotonic()
        if force or now - self.last >= self.interval:
            self.last = now
            self.write(self.line(running))

    def line(self, running: list[str]) -> str:
        """The progress line itself."""
        elapsed = int(time.monotonic() - self.start)
        shown = f" ({', '.join(running[:4])})" if running else ""
        text = (f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {self.done + self.failed}/{self.total}"
                f" probed · {len(running)} in progress{shown} · {self.failed} failed")
        if self.best:
            text += f" · best {self.shown_as} {self.best[1]:.3f} ({self.best[0]})"
        return text

    def write(self, text: str) -> None:
        """Print one line to the terminal now (Ray's own output is off)."""
        print(text, file=sys.stdout, flush=True)


def run_jobs(jobs: list[ProbeJob], target: Split, banks: dict[str, EpisodeBank],
             ev: EvaluationConfig, progress: ProbeProgress,
             on_result: Callable[[ProbeResult], None]) -> Iterator[tuple[str, str]]:
    """Run every job as a Ray task; call `on_result` as each succeeds, yield (label, error)
    for each that fails (a failed job never stops the others)."""
    import ray

    gpu = gpus_per_task()
    remote = ray.remote(num_cpus=1, num_gpus=gpu, max_retries=1)(_task)
    target_ref, banks_ref = ray.put(target), ray.put(banks)
    pending = {remote.remote(job, target_ref, banks_ref, ev, gpu > 0): job.label for job in jobs}
    progress.maybe_print(list(pending.values()), force=True)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=progress.interval)
        for ref in ready:
            label = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # the task's own error, as Ray re-raises it
                cause = getattr(exc, "cause", None) or exc
                progress.ended(None, label, first_line(cause))
                yield label, first_line(cause)
                continue
            on_result(result)
            progress.ended(result, label)
        progress.maybe_print(list(pending.values()), force=bool(ready))
