"""Does the study driver's cost per trial stay flat over hundreds of tiny trials?

Expected run time on a 2-core machine at load ~1: about 9 minutes for the default 200 trials
(~2.4 s each, plus the bare baseline), 17 minutes with `--compare` (two studies); `--quick`
(6 trials, with `--compare` as its test runs it) about 1 minute.

Goals (issue 21, item 5): the driver's per-trial overhead at most 1 s, and flat driver memory.

How: a real study through `study.run.driver.run_study` (local Ray, OptunaSearch on its sqlite
storage, the MLflow callback writing to a sqlite store, the real trainable `trainables.pretrain`)
of `--trials` tiny trials: the demo preset shrunk to a width-0.25 ResNet-18, 2 epochs on 20
images per source class, 50 few-shot episodes, every evaluation metric family the demo logs (so
the stores grow per trial as the demo's do), width and epochs fixed; one trial at a time
(`--concurrent`), so every second of the Tune run is either a trial's own work or the driver's.

* A trial's own work is what its worker measured: Tune's `time_total_s` in the trial's last
  result (from the trainable's start to its last report: data, model, epochs, evaluation,
  checkpoints). `work_s` is the finer `time/train_s + time/eval_s` the trial reports itself.
* Per-trial overhead = the trial's cycle on the driver's clock (from the previous trial's
  completion, or the Tune run's start, to this one's completion, as a Tune callback sees it)
  minus its own work: proposing it, starting or reusing its worker, moving its results, the
  callbacks (MLflow, progress), Tune's experiment snapshots. Mean, median and p95 over trials,
  and the mean over trials 1-20 and over the last 20, to show growth. Goal: mean <= 1 s.
* Driver memory: the driver process's RSS (psutil) as each trial completes; reported at trial 20
  and at the end, and its growth per 100 trials (least-squares slope over trials 20..end; and
  over the last half of the trials alone, to tell growth that slows from growth that does not).
  "Flat" here means a slope under 5 MB per 100 trials (under 50 MB at 1,000 trials, a few % of
  a head node's Python process) -- a threshold chosen before measuring, not from the result.
* Stores per trial: (size at the end - size at trial 20) / trials since: the MLflow sqlite file
  (with its -wal/-shm) and its artifact folder, the Optuna sqlite storage, and the Ray Tune
  experiment folder (trial folders, checkpoints, snapshots).
* Baselines, same run: `bare`, the same trial config trained by `trainables.pretrain.Trainer` in a
  plain process at Ray's worker niceness (checkpoint written to a temporary folder per epoch, as
  the trainable does) -- `tune_over_bare` is the study's seconds per trial over the bare
  trainable's; and `--compare` runs the same study a second time with the driver of before the
  fixes (`fixes_off`: study.run.compact's callback does nothing, study.run.allocator's
  malloc settings are not applied, and study.run.sqlite_cache leaves SQLite's page caches at
  their default), printing the ratios.

Each study runs in a fresh process (spawned) with its own local Ray, as a user's `nctune study`
does: neither study inherits the other's memory or allocator state. The glyph cache
(NCTUNE_CACHE, default ~/.cache/nctune) is reused; stores and Ray results live in a temporary
folder. Each study process starts its own local Ray and shuts down only that one. Prints
one JSON line, last. `--profile FILE` writes cProfile stats of the (first) study's driver.

    .venv/bin/python benchmarks/driver_scaling.py [--trials 200] [--compare] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import ray
from ray import tune

from study.config import StudyConfig
from study.presets import read_preset
from study.run import compact, tuner
from study.run.driver import run_study

MARK = 20  # the trial whose completion is the reference point for memory and store growth
FLAT_MB_PER_100 = 5.0  # "flat" driver memory: growth under this many MB per 100 trials
RAY_WORKER_NICENESS = 15


def tiny_study(root: str, name: str, trials: int, concurrent: int) -> StudyConfig:
    """The demo preset shrunk so a trial's own work is ~2 s on one core (see the docstring)."""
    data = read_preset("demo")
    data["name"] = name
    data["dataset"] = {**data["dataset"], "source_train_per_class": 20}
    data["backbone"] = {**data["backbone"], "width": 0.25}
    data["training"] = {**data["training"], "epochs": 2}
    data["evaluation"] = {**data["evaluation"], "episodes": 50, "probe_episodes": 10}
    data["space"] = {k: v for k, v in data["space"].items() if k not in ("width", "epochs")}
    data["search"] = {**data["search"], "num_samples": trials, "max_concurrent": concurrent}
    data["storage"] = {"root": root}
    data["tracking"] = {"uri": f"sqlite:///{root}/mlflow.db"}
    return StudyConfig.model_validate(data)


def folder_bytes(*paths: Path) -> int:
    """Bytes of the files under each path (a file counts itself); missing paths count 0."""
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            for sub in path.rglob("*"):
                with contextlib.suppress(OSError):  # a checkpoint deleted while we walk
                    total += sub.stat().st_size if sub.is_file() else 0
    return total


def store_sizes(root: Path, name: str) -> dict[str, int]:
    """Bytes of the MLflow store (sqlite + -wal/-shm + artifacts), Optuna's and Ray's folder."""
    return {"mlflow": folder_bytes(*root.glob("mlflow.db*"), root / "artifacts"),
            "optuna": folder_bytes(*root.glob("optuna.db*")),
            "ray": folder_bytes(root / "ray" / name)}


class DriverProbe(tune.Callback):
    """On the driver: each trial's completion time, its own work, RSS and CPU at completion."""

    def __init__(self, root: Path, name: str, mark: int) -> None:
        self.root, self.name, self.mark = root, name, mark
        self.begin = 0.0
        self.ends: list[float] = []
        self.own: list[float] = []
        self.work: list[float] = []
        self.spans: list[float] = []
        self.rss: list[float] = []
        self.started: dict[str, float] = {}
        self.work_now: dict[str, float] = {}
        self.cpu_begin = 0.0
        self.sizes_at_mark: dict[str, int] = {}
        self.proc = psutil.Process()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "proc": None}  # pickled with the experiment; not needed after

    def setup(self, **info: Any) -> None:
        """Tune hook: the run starts (before any worker exists)."""
        self.begin = time.perf_counter()
        self.cpu_begin = sum(self.proc.cpu_times()[:2])

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune hook: a trial's worker got it."""
        self.started[trial.trial_id] = time.perf_counter()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        """Tune hook: add up the work the trial says it did this epoch."""
        step = float(result.get("time/train_s", 0.0)) + float(result.get("time/eval_s", 0.0))
        self.work_now[trial.trial_id] = self.work_now.get(trial.trial_id, 0.0) + step

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune hook: note the time, the trial's own work and the driver's RSS."""
        now = time.perf_counter()
        self.ends.append(now)
        self.spans.append(now - self.started.get(trial.trial_id, now))
        self.own.append(float((trial.last_result or {}).get("time_total_s", 0.0)))
        self.work.append(self.work_now.pop(trial.trial_id, 0.0))
        self.rss.append(self.proc.memory_info().rss / 2**20)
        if len(self.ends) == self.mark:
            self.sizes_at_mark = store_sizes(self.root, self.name)


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys on xs (0 for fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def p95(values: list[float]) -> float:
    """The 95th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


@contextmanager
def fixes_off() -> Iterator[None]:
    """The driver as it was before the fixes: ended trials keep every metric in Tune
    (study.run.compact's callback does nothing), glibc's allocator keeps its defaults
    (study.run.allocator is not applied) and SQLite its page cache (study.run.sqlite_cache)."""
    saved = (compact.CompactFinishedTrials.on_trial_complete, tuner.settle_allocator,
             tuner.cap_sqlite_cache)
    compact.CompactFinishedTrials.on_trial_complete = tune.Callback.on_trial_complete  # type: ignore[method-assign]
    tuner.settle_allocator = lambda: False
    tuner.cap_sqlite_cache = lambda: None
    try:
        yield
    finally:
        (compact.CompactFinishedTrials.on_trial_complete, tuner.settle_allocator,  # type: ignore[method-assign]
         tuner.cap_sqlite_cache) = saved


def run_one(root: Path, name: str, trials: int, concurrent: int, mark: int,
            profile: str | None) -> dict[str, Any]:
    """One study of `trials` tiny trials; its overhead, memory and store figures."""
    cfg = tiny_study(str(root), name, trials, concurrent)
    probe = DriverProbe(root, name, mark)
    start = time.perf_counter()
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    state = run_study(cfg, report=False, callbacks=[probe])
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    wall = time.perf_counter() - start
    n = len(probe.ends)
    if state.status != "completed" or n != trials:
        raise RuntimeError(f"study '{name}' ended '{state.status}' with {n} of {trials} done")
    cpu = sum(probe.proc.cpu_times()[:2]) - probe.cpu_begin
    cycles = [e - s for s, e in zip([probe.begin, *probe.ends[:-1]], probe.ends, strict=True)]
    over = [c - o for c, o in zip(cycles, probe.own, strict=True)]
    end_sizes = store_sizes(root, name)
    at_mark = probe.sizes_at_mark or {k: 0 for k in end_sizes}
    since = max(1, n - mark) if probe.sizes_at_mark else n
    tail = slice(max(mark - 1, 0), n)
    growth = slope(list(range(mark, n + 1)), probe.rss[tail]) * 100
    half = n // 2  # does the growth slow down (bounded caches filling) or keep its pace?
    late_growth = slope(list(range(half + 1, n + 1)), probe.rss[half:]) * 100
    over_growth = slope(list(range(1, n + 1)), over) * 100
    return {
        "trials": n,
        "tune_run_s": round(probe.ends[-1] - probe.begin, 1),
        "study_wall_s": round(wall, 1),
        "trials_per_s": round(n / (probe.ends[-1] - probe.begin), 4),
        "own_s_mean": round(statistics.fmean(probe.own), 3),
        "work_s_mean": round(statistics.fmean(probe.work), 3),
        "cycle_s_mean": round(statistics.fmean(cycles), 3),
        "overhead_s": {"mean": round(statistics.fmean(over), 3),
                       "median": round(statistics.median(over), 3),
                       "p95": round(p95(over), 3),
                       "first_20_mean": round(statistics.fmean(over[:20]), 3),
                       "last_20_mean": round(statistics.fmean(over[-20:]), 3),
                       # least-squares slope over all trials: does it grow with the study?
                       "growth_per_100_trials": round(over_growth, 3)},
        # Trial start (worker has it) to completion, minus own work: the part inside the span
        "span_overhead_s_mean": round(statistics.fmean(
            s - o for s, o in zip(probe.spans, probe.own, strict=True)), 3),
        "driver_cpu_s_per_trial": round(cpu / n, 3),
        "driver_rss_mb": {f"at_trial_{mark}": round(probe.rss[mark - 1], 1),
                          "end": round(probe.rss[-1], 1),
                          "growth_per_100_trials": round(growth, 2),
                          "growth_per_100_trials_last_half": round(late_growth, 2)},
        "bytes_per_trial": {k: round((end_sizes[k] - at_mark[k]) / since)
                            for k in end_sizes},
        "store_bytes_end": end_sizes,
    }


def study_process(root: str, name: str, trials: int, concurrent: int, mark: int,
                  profile: str | None, before: bool, out: Any) -> None:
    """A study in a process of its own (a driver as the user's `nctune study` is: its own Ray,
    its own allocator state); `before` turns the fixes off."""
    with fixes_off() if before else contextlib.nullcontext():
        tuner.init_ray(None)
        try:
            out.put(run_one(Path(root), name, trials, concurrent, mark, profile))
        finally:
            ray.shutdown()


def study_in_process(*args: Any) -> dict[str, Any]:
    """Run `study_process(*args)` in a fresh spawned process; its figures."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=study_process, args=(*args, out))
    proc.start()
    result = out.get()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"the study process exited with {proc.exitcode}")
    return result


def bare_trials(count: int, out: Any) -> None:
    """The baseline process: `count` trials of the tiny config with Trainer, no Ray, no stores."""
    import torch

    from trainables.checkpoint import save_checkpoint
    from trainables.pretrain import Trainer

    os.nice(RAY_WORKER_NICENESS)
    cfg = tiny_study(tempfile.gettempdir(), "bare", 1, 1).trial_config()

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        with tempfile.TemporaryDirectory() as folder:
            if state is not None:
                save_checkpoint(state, folder)

    times = []
    for _ in range(count + 1):  # the first warms the imports and caches up
        start = time.perf_counter()
        Trainer(cfg, threads=1, device=torch.device("cpu")).fit(report)
        times.append(time.perf_counter() - start)
    out.put(times[1:])


def bare_baseline(count: int) -> float:
    """Mean seconds per bare trial, in a fresh process."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=bare_trials, args=(count, out))
    proc.start()
    times = out.get()
    proc.join()
    return statistics.fmean(times)


def rss_growth(study: dict[str, Any]) -> float:
    """A study's driver RSS growth, MB per 100 trials."""
    return float(study["driver_rss_mb"]["growth_per_100_trials"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200, help="trials per study (200)")
    parser.add_argument("--concurrent", type=int, default=1, help="max_concurrent (1)")
    parser.add_argument("--compare", action="store_true",
                        help="run a second study with the driver settings of before the fixes")
    parser.add_argument("--profile", default=None, help="cProfile stats of the first study")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 6 trials (memory mark at trial 3), 1 bare trial")
    args = parser.parse_args()
    trials = 6 if args.quick else args.trials
    if trials < 4:
        print(f"--trials: {trials} is too few; at least 4 (allowed: 4 or more, e.g. 200)")
        raise SystemExit(2)
    mark = MARK if trials > 2 * MARK else trials // 2
    load_start = os.getloadavg()
    bare_s = bare_baseline(1 if args.quick else 10)
    os.environ.pop("RAY_ADDRESS", None)
    with tempfile.TemporaryDirectory(prefix="nctune-driver-") as tmp:
        # Each study is a fresh process with its own Ray: neither inherits the other's memory
        after = study_in_process(str(Path(tmp) / "after"), "after", trials, args.concurrent,
                                 mark, args.profile, False)
        before = None
        if args.compare:
            before = study_in_process(str(Path(tmp) / "before"), "before", trials,
                                      args.concurrent, mark, None, True)
    cycle = after["cycle_s_mean"]
    result: dict[str, Any] = {
        "benchmark": "driver_scaling",
        "trials": trials,
        "concurrent": args.concurrent,
        "memory_mark_trial": mark,
        "study": after,
        "bare_trial_s": round(bare_s, 3),
        "tune_over_bare": round(cycle / bare_s, 3),
    }
    if before is not None:
        result["before_fixes"] = before
        result["overhead_after_over_before"] = round(
            after["overhead_s"]["mean"] / max(before["overhead_s"]["mean"], 1e-9), 3)
        result["cycle_after_over_before"] = round(cycle / before["cycle_s_mean"], 3)
        result["rss_growth_after_over_before"] = round(
            rss_growth(after) / max(rss_growth(before), 1e-9), 3)
    result["goals_met"] = {"overhead_le_1s": after["overhead_s"]["mean"] <= 1.0,
                           "memory_flat": rss_growth(after) < FLAT_MB_PER_100}
    result.update({"quick": args.quick, "cpus": os.cpu_count(),
                   "loadavg_start": [round(x, 2) for x in load_start],
                   "loadavg_end": [round(x, 2) for x in os.getloadavg()]})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
