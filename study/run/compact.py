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

What was left after that, by memray over trials 20 to 60 of the tiny study: the summaries of
Tune's own keys (`time_this_iter_s`, `iterations_since_restore`, ...: ~9 KB per trial as Python
objects), the run metadata's cached JSON (indented: ~9 KB), and the host, date and path keys of
both kept checkpoints' results (pickled as hex inside that JSON). An ended trial now keeps the
summary of its search metric(s) only (what `ExperimentAnalysis.get_best_trial` reads), its kept
checkpoints keep the keys a restore from them reads (`CHECKPOINT_KEYS`, and the search metrics),
and its run metadata is cached as compact JSON, which Tune's `from_json_state` reads the same.

Tune's record of a trial also holds its whole config twice in its JSON (`config` and the
unresolved config), its tag spelling out every key of it (~900 characters), and the config dict:
about 6 KB per trial, the same constants in each but the searched values. An ended trial keeps
its searched values and `epochs` (what a resumed study's end status reads); each trial's
`params.json` in the Ray results (written when it starts), the MLflow run's params and the
study's `config.yaml` keep the whole config, so Tune's ResultGrid of a study shows an ended
trial's searched keys only.

Ray 2.60 also remembers, in `ray.util.debug`'s log-once set, the text of every deque its JSON
encoder could not encode (one entry per metric per snapshot of a running trial, ~40 KB per
trial); those entries only ever silence a debug line, and are cleared here too.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from typing import Any

from ray.tune import Callback
from ray.tune.search.variant_generator import format_vars
from ray.tune.utils.serialization import TuneFunctionEncoder

from analysis.contract import is_trial_metric

# The key under which Ray's TuneFunctionEncoder logs each value it could not encode, once
ENCODER_LOG_ONCE = "tune_func_encode:"
# Tune's copies, in every result, of the trial's own `trial.config` and `trial.experiment_tag`
TUNE_COPIES = frozenset({"config", "experiment_tag"})
# What a kept checkpoint's result must still say: a trainable restored from it reads its
# iteration and time (Trainable.restore), and the epoch and status say which one it is
CHECKPOINT_KEYS = frozenset({"training_iteration", "time_total_s", "epoch", "done",
                             "trial_status"})
# What nctune's driver reads from an ended trial's config: its planned epochs (a resumed
# study's end status of the trial, study.run.tracking.end_status), beside the searched values
ENDED_CONFIG_KEYS = frozenset({"epochs"})


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

    def __init__(self, keep: list[str], searched: Iterable[str] = ()) -> None:
        self.keep = frozenset(keep)
        self.searched = frozenset(searched)

    def summarised(self, key: str) -> bool:
        """Whether Tune keeps `key`'s summary (max, min, means) for an ended trial."""
        return key in self.keep

    def checkpointed(self, key: str) -> bool:
        """Whether a kept checkpoint's result keeps `key` once its trial has ended."""
        return key in self.keep or key in CHECKPOINT_KEYS

    def dropped(self, key: str) -> bool:
        """Whether `key` leaves Tune's record of an ended trial: a contract metric not searched,
        or Tune's copy of the trial's config or tag."""
        return key in TUNE_COPIES or (is_trial_metric(key) and key not in self.keep)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune hook: the trial ended; keep only what Tune and a resume still read."""
        compact_trial(trial, self.dropped, self.summarised, self.checkpointed)
        keep_searched_config(trial, self.searched)
        forget_encoder_log()


def compact_trial(trial: Any, dropped: Any, summarised: Any = None,
                  checkpointed: Any = None) -> None:
    """Remove the `dropped(key)` keys from the trial's last result, the summaries of all but
    the `summarised(key)` keys, all but the `checkpointed(key)` keys from its kept checkpoints'
    results (by default: the keys not dropped), and its window deques (their means stay in
    `metric_analysis`); then cache the run metadata as compact JSON.

    Each assignment to a `run_metadata` attribute clears its cached JSON (Tune's own
    `__setattr__`); the cache set last is what Tune's next snapshot writes.
    """
    meta = getattr(trial, "run_metadata", None)
    if meta is None:
        return
    summarised = summarised or (lambda key: not dropped(key))
    checkpointed = checkpointed or (lambda key: not dropped(key))
    meta.last_result = {k: v for k, v in (meta.last_result or {}).items() if not dropped(k)}
    meta.metric_analysis = {k: v for k, v in meta.metric_analysis.items() if summarised(k)}
    meta.metric_n_steps = StepWindows(getattr(meta, "_n_steps", (5, 10)))
    # Tune's checkpoint manager keeps the whole result each kept checkpoint was reported with
    # (a `search.max_failures` restore of a running trial reads its iteration and time).
    manager = meta.checkpoint_manager
    if manager is not None:
        for kept in getattr(manager, "_checkpoint_results", []):
            kept.metrics = {k: v for k, v in (kept.metrics or {}).items() if checkpointed(k)}
        meta.checkpoint_manager = manager  # clears the cached JSON that pickled the old ones
    meta._cached_json = compact_json(meta)


def keep_searched_config(trial: Any, searched: frozenset[str]) -> None:
    """Keep, of an ended trial's config, its `searched` values and `ENDED_CONFIG_KEYS`; its tag
    becomes Tune's trial index and the searched values (`3_dropout=0.1,lr=0.01`)."""
    config = getattr(trial, "config", None)
    if not isinstance(config, dict):
        return
    small = {k: v for k, v in config.items() if k in searched or k in ENDED_CONFIG_KEYS}
    trial.config = small
    if hasattr(trial, "_Trial__unresolved_config"):  # the same dict, until now
        trial._Trial__unresolved_config = small
    index = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    values = format_vars({(k,): small[k] for k in sorted(searched) if k in small})
    trial.experiment_tag = f"{index}_{values}" if values else index
    trial.invalidate_json_state()


def compact_json(meta: Any) -> str:
    """The run metadata's JSON as Tune's `get_json_state` writes it, without the indentation;
    `_TrainingRunMetadata.from_json_state` reads either."""
    data = {k: v for k, v in meta.__dict__.items() if k != "_cached_json"}
    return json.dumps(data, separators=(",", ":"), cls=TuneFunctionEncoder)


def forget_encoder_log() -> None:
    """Clear the log-once entries Ray's JSON encoder leaves per value it cannot encode."""
    from ray.util import debug

    logged = getattr(debug, "_logged", None)
    if isinstance(logged, set):
        for key in [k for k in logged if isinstance(k, str) and k.startswith(ENCODER_LOG_ONCE)]:
            logged.discard(key)
