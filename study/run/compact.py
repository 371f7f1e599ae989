"""Less driver memory per trial over thousands of trials: an ended trial's metrics leave Tune.

Ray Tune keeps, for every trial it ever ran, the last result and a running summary of every
numeric key in it (`Trial.run_metadata`: max, min, mean, last, last-5 and last-10 means, and a
deque per window), the whole result of each kept checkpoint (two per trial), and caches all of
it as indented JSON for its experiment snapshots. A trial of the demo reports ~110 contract
metrics per epoch, so each ended trial held about half a megabyte of the driver's memory for
good (tracemalloc, trials 20 to 50 of the tiny study of benchmarks/driver_scaling.py: 490 KB per
trial; the driver's RSS grew 41 MB per 100 trials over 200). MLflow already holds every one of
those values (the tracking callback logs them as results arrive), so once a trial has ended its
contract metrics are dropped from Tune's copy, except the search metric(s): Tune's snapshot,
the restored trials of a resume, the scheduler and the searcher still see everything they read
(`epoch`, `trial_status`, `error`, the search metrics, Tune's own keys). Measured in the same
run: 15 MB per 100 trials with it, 41 MB without.

An ended trial also drops Tune's copies of what its own record already holds (its `config` and
`experiment_tag`, which Tune puts in every result and so in each kept checkpoint's result), and
its per-window deques (`metric_n_steps`, from which Tune computed the last-5 and last-10 means
that `metric_analysis` keeps). Those were most of what was left per trial: tracemalloc over trials
15 to 45 of the tiny study measured 84 KB of heap per trial with the metrics dropped, of which the
deques held 15 KB, the run metadata's cached JSON 16 KB and the deserialised result copies 21 KB.

Ray 2.60 also remembers, in `ray.util.debug`'s log-once set, the text of every deque its JSON
encoder could not encode (one entry per metric per snapshot of a running trial, ~40 KB per
trial); those entries only ever silence a debug line, and are cleared here too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from ray.tune import Callback

from analysis.contract import is_trial_metric

# The key under which Ray's TuneFunctionEncoder logs each value it could not encode, once
ENCODER_LOG_ONCE = "tune_func_encode:"
# Tune's copies, in every result, of the trial's own `trial.config` and `trial.experiment_tag`
TUNE_COPIES = frozenset({"config", "experiment_tag"})


class StepWindows(dict):
    """An ended trial's `metric_n_steps`: empty, refilled on demand.

    Tune's `update_metric` appends each new value to the key's window deques; should a result
    still reach an ended trial (Tune sends none to a terminated one), the key's windows restart
    from it instead of failing. It is written to Tune's snapshot as the empty dict it is.
    """

    def __init__(self, n_steps: Iterable[int]) -> None:
        super().__init__()
        self.n_steps = tuple(n_steps)

    def __missing__(self, metric: str) -> dict[str, deque]:
        windows: dict[str, deque] = {str(n): deque(maxlen=n) for n in self.n_steps}
        self[metric] = windows
        return windows


class CompactFinishedTrials(Callback):
    """Drops an ended trial's contract metrics (kept in MLflow) from Tune's in-memory record.

    Runs as the last of nctune's callbacks, in `on_trial_complete`: every callback before it
    has seen the whole last result, and Tune marks the trial for its next snapshot right after,
    so the snapshot's JSON is rebuilt from the compact record.
    """

    def __init__(self, keep: list[str]) -> None:
        self.keep = frozenset(keep)

    def dropped(self, key: str) -> bool:
        """Whether `key` leaves Tune's record of an ended trial: a contract metric not searched,
        or Tune's copy of the trial's config or tag."""
        return key in TUNE_COPIES or (is_trial_metric(key) and key not in self.keep)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune hook: the trial ended; keep only what Tune and a resume still read."""
        compact_trial(trial, self.dropped)
        forget_encoder_log()


def compact_trial(trial: Any, dropped: Any) -> None:
    """Remove the `dropped(key)` keys from the trial's last result, metric summaries and kept
    checkpoints' results, and its window deques (their means stay in `metric_analysis`).

    Each assignment to a `run_metadata` attribute clears its cached JSON (Tune's own
    `__setattr__`), so the next snapshot writes the compact record.
    """
    meta = getattr(trial, "run_metadata", None)
    if meta is None:
        return
    meta.last_result = {k: v for k, v in (meta.last_result or {}).items() if not dropped(k)}
    meta.metric_analysis = {k: v for k, v in meta.metric_analysis.items() if not dropped(k)}
    meta.metric_n_steps = StepWindows(getattr(meta, "_n_steps", (5, 10)))
    # Tune's checkpoint manager keeps the whole result each kept checkpoint was reported with
    # (`search.max_failures` restores read Tune's own keys from it: they stay).
    manager = meta.checkpoint_manager
    if manager is not None:
        for kept in getattr(manager, "_checkpoint_results", []):
            kept.metrics = {k: v for k, v in (kept.metrics or {}).items() if not dropped(k)}
        meta.checkpoint_manager = manager  # clears the cached JSON that pickled the old ones


def forget_encoder_log() -> None:
    """Clear the log-once entries Ray's JSON encoder leaves per value it cannot encode."""
    from ray.util import debug

    logged = getattr(debug, "_logged", None)
    if isinstance(logged, set):
        for key in [k for k in logged if isinstance(k, str) and k.startswith(ENCODER_LOG_ONCE)]:
            logged.discard(key)
