"""Do two concurrent trials finish twice as many trials per hour as one, on a 2-core machine?

Expected run time: about 3 minutes on a 2-core machine at load ~3 (up to ~8 under heavy load);
`--quick` about 1.

Claim (aim >= 1.7): the demo preset run at `search.max_concurrent` 2 completes trials at >= 1.7
times the rate it does at max_concurrent 1, everything else equal. Each trial holds
`resources.cpus_per_trial` (1 in the demo) and sets its torch threads to that share, so two
trials use the two cores without oversubscribing them; a trial that took every core's worth of
threads would leave the ratio near 1.

How: the demo preset (nctune's own demo config) as two real studies through
`study.run.driver.run_study` on one local Ray, identical but for max_concurrent, with the demo's 8
trials (`--samples` to change it). The same search seed gives the same configs in both (TPE
samples its first 10 trials at random; checked and reported as `same_configs`). Trials per hour
= trials / the Tune run's time (from its start, before any worker exists, to the last trial's
end), as a Tune callback on the driver sees it; the whole `run_study` wall time (data check,
MLflow setup, summary) is reported too.
`trial_s_mean` is each study's mean trial duration (worker up to trial end): at max_concurrent
2 it stays near its value at 1 when trials do not compete for threads. A shared machine caps the
ratio: so each study also reports where the CPU went (driver, Ray daemons, trial workers, idle
workers, and the cores that other users' processes kept busy) and `trial_cpu_ratio`, the trial
workers' CPU seconds at 2 over those at 1 (near 1: running two at once costs no extra CPU, the
sign of no oversubscription, whatever the load). Ray runs its workers at niceness 15, so on a
busy machine the trials get only what others leave idle. A baseline measured first: 1, then 2,
then 1 bare PyTorch process(es) training the demo's model with one thread each at niceness 15
(`machine_ratio`: what a second concurrent trainer adds on this machine right now; 2.0 on an idle
machine with two real cores). The load average is printed too. The
studies' storage and MLflow store are temporary; the glyph cache (NCTUNE_CACHE, default
~/.cache/nctune) is reused. This script starts its own local Ray and shuts down only that one.
Prints one JSON line, last.

    .venv/bin/python benchmarks/study_scaling.py [--samples 8] [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import threading
import time
from typing import Any

import psutil
import ray
from ray import tune

from study.config import StudyConfig
from study.presets import read_preset
from study.run.driver import run_study
from study.run.tuner import init_ray


class TrialSpans(tune.Callback):
    """When the Tune run and each trial started and ended (driver clock), and the configs."""

    def __init__(self, searched: list[str]) -> None:
        self.searched = searched
        self.begin = 0.0
        self.start: dict[str, float] = {}
        self.end: dict[str, float] = {}
        self.configs: dict[str, dict[str, Any]] = {}

    def setup(self, stop: Any = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        self.begin = time.perf_counter()  # the Tune run starts: before any trial's worker

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.start.setdefault(trial.trial_id, time.perf_counter())
        self.configs[trial.trial_id] = {k: trial.config.get(k) for k in self.searched}

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.end[trial.trial_id] = time.perf_counter()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.end[trial.trial_id] = time.perf_counter()


class CpuMeter:
    """CPU seconds used during a study by this process (the driver: Tune, the MLflow callback),
    the Ray daemons it started (GCS, raylet, agents), the Ray workers that ran trials, the ones
    that only idled (start-up imports), and by the rest of the machine (other users), polled
    twice a second: what a ratio below 2 comes from."""

    def __init__(self) -> None:
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.titles: dict[int, set[str]] = {}
        self.born: set[int] = set()
        self.worker_nice: int | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.machine = psutil.cpu_times()
        self.wall = time.perf_counter()
        self.started = False

    def _read(self) -> None:
        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                with proc.oneshot():
                    cpu = sum(proc.cpu_times()[:2])
                    # Every time: a worker renames itself (ray::IDLE, ray::ImplicitFunc.train)
                    title = " ".join(proc.cmdline()[:1]) or proc.name()
                    if "ImplicitFunc" in title:
                        self.worker_nice = proc.nice()
            except psutil.Error:
                continue
            self.titles.setdefault(proc.pid, set()).add(title)
            # A process born during the study counts from 0, one alive before from now.
            if proc.pid not in self.first:
                self.first[proc.pid] = 0.0 if self.started else cpu
                if self.started:
                    self.born.add(proc.pid)
            self.last[proc.pid] = cpu

    def _poll(self) -> None:
        while not self.stop.wait(0.5):
            self._read()

    def __enter__(self) -> CpuMeter:
        self._read()
        self.started = True
        self.machine, self.wall = psutil.cpu_times(), time.perf_counter()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self._read()
        now = psutil.cpu_times()
        self.wall = time.perf_counter() - self.wall
        idle = (now.idle + now.iowait) - (self.machine.idle + self.machine.iowait)
        self.busy = sum(now) - sum(self.machine) - idle

    def kind(self, pid: int) -> str:
        titles = self.titles[pid]
        if pid == os.getpid():
            return "driver"
        if any("ImplicitFunc" in t for t in titles):
            return "trial_workers"
        if any(t.startswith("ray::IDLE") for t in titles):
            return "idle_workers"
        return "ray_daemons"

    def report(self) -> dict[str, Any]:
        out = {"driver": 0.0, "ray_daemons": 0.0, "trial_workers": 0.0, "idle_workers": 0.0}
        for pid, cpu in self.last.items():
            out[self.kind(pid)] += cpu - self.first[pid]
        ours = sum(out.values())
        return {"cpu_s": {k: round(v, 1) for k, v in out.items()},
                "workers_started": sum(self.kind(p).endswith("workers") for p in self.born),
                # Cores busy on average: with this study's trials, and with everything else
                "trial_cores": round(out["trial_workers"] / self.wall, 2),
                "other_cores": round(max(0.0, self.busy - ours) / self.wall, 2),
                "idle_cores": round(max(0.0, (os.cpu_count() or 1) - self.busy / self.wall), 2),
                # Ray starts its workers at niceness 15: any other user's work comes first
                "trial_worker_nice": self.worker_nice}


def bare_worker(seconds: float, ready: Any, go: Any, rates: Any) -> None:
    """One process of the machine baseline: SGD steps of the demo's model on a fixed batch,
    one torch thread, at Ray's worker niceness; puts its steps per second."""
    import torch
    import torch.nn.functional as F

    from trainables.backbones import create_backbone

    os.nice(15)
    torch.set_num_threads(1)
    model = create_backbone("resnet18", num_classes=100, in_chans=1, width=0.5, small_stem=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(128, 1, 32, 32), torch.randint(0, 100, (128,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    ready.put(True)
    go.wait()
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    rates.put(steps / (time.perf_counter() - start))


def machine_scaling(seconds: float) -> dict[str, Any]:
    """Steps per second of 1, then 2, then 1 bare process(es) at once: how much a second
    concurrent single-threaded trainer can add on this machine right now (2.0 when idle)."""
    ctx = mp.get_context("spawn")
    totals = []
    for n in (1, 2, 1):
        ready, rates, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=bare_worker, args=(seconds, ready, go, rates))
                 for _ in range(n)]
        for proc in procs:
            proc.start()
        for _ in procs:
            ready.get()
        go.set()
        totals.append(sum(rates.get() for _ in procs))
        for proc in procs:
            proc.join()
    one = (totals[0] + totals[2]) / 2
    return {"steps_per_s": [round(t, 2) for t in totals], "ratio": round(totals[1] / one, 3)}


def start_ray() -> str:
    """The product's local Ray (`study.run.tuner.init_ray`: 127.0.0.1, never a recorded cluster)."""
    os.environ.pop("RAY_ADDRESS", None)
    init_ray(None)
    return "study.run.tuner.init_ray"


def demo_study(root: str, concurrent: int, samples: int, quick: bool) -> StudyConfig:
    data = read_preset("demo")
    data["name"] = f"scaling-c{concurrent}"
    data["search"] = {**data["search"], "num_samples": samples, "max_concurrent": concurrent}
    data["storage"] = {"root": root}
    data["tracking"] = {"uri": f"sqlite:///{root}/mlflow.db"}
    if quick:
        data["space"] = {**data["space"], "epochs": {"type": "int", "low": 1, "high": 2}}
        data["evaluation"] = {**data["evaluation"], "episodes": 100}
    return StudyConfig.model_validate(data)


def run(cfg: StudyConfig) -> dict[str, Any]:
    spans = TrialSpans(cfg.searched())
    start = time.perf_counter()
    with CpuMeter() as cpu:
        state = run_study(cfg, report=False, callbacks=[spans])
    wall = time.perf_counter() - start
    if state.status != "completed" or len(spans.end) != cfg.num_samples:
        raise RuntimeError(f"study '{cfg.name}' ended '{state.status}' with {len(spans.end)} "
                           f"of {cfg.num_samples} trials done")
    # The Tune run, from its start (workers not yet started) to the last trial's end: what a
    # user waits for; each trial's worker start-up is part of it.
    span = max(spans.end.values()) - spans.begin
    running = max(spans.end.values()) - min(spans.start.values())
    durations = [spans.end[t] - spans.start[t] for t in spans.end]
    return {"trials": cfg.num_samples,
            "tune_run_s": round(span, 1),
            "trials_per_hour": round(cfg.num_samples * 3600 / span, 1),
            # From the first trial's start (its worker up) to the last trial's end
            "trials_running_s": round(running, 1),
            "study_wall_s": round(wall, 1),
            "trials_per_hour_wall": round(cfg.num_samples * 3600 / wall, 1),
            "trial_s_mean": round(sum(durations) / len(durations), 1),
            **cpu.report(),
            "configs": sorted(json.dumps(c, sort_keys=True) for c in spans.configs.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8, help="trials per study (demo: 8)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 trials of 1-2 epochs, 100 episodes")
    args = parser.parse_args()
    samples = 2 if args.quick else args.samples
    load_start = os.getloadavg()
    machine = machine_scaling(3.0 if args.quick else 10.0)
    with tempfile.TemporaryDirectory(prefix="nctune-scaling-") as root:
        ray_start = start_ray()
        try:
            one = run(demo_study(root, 1, samples, args.quick))
            two = run(demo_study(root, 2, samples, args.quick))
        finally:
            ray.shutdown()
    ratio = two["trials_per_hour"] / one["trials_per_hour"]
    same = one.pop("configs") == two.pop("configs")
    result = {
        "benchmark": "study_scaling",
        "preset": "demo",
        "num_samples": samples,
        "note": ("demo preset" if samples == 8 else
                 f"demo preset with num_samples {samples} instead of 8")
                + ("; quick: epochs 1-2, 100 episodes" if args.quick else ""),
        "cpus_per_trial": read_preset("demo")["resources"]["cpus_per_trial"],
        "cpus": os.cpu_count(),
        "concurrent_1": one,
        "concurrent_2": two,
        "same_configs": same,
        "ratio": round(ratio, 3),
        "ratio_wall": round(two["trials_per_hour_wall"] / one["trials_per_hour_wall"], 3),
        "trial_slowdown_at_2": round(two["trial_s_mean"] / one["trial_s_mean"], 3),
        # CPU seconds the trials' workers used, c2 / c1: near 1 when two trials at once cost
        # no more CPU than one after the other (no threads fighting over cores)
        "trial_cpu_ratio": round(two["cpu_s"]["trial_workers"] / one["cpu_s"]["trial_workers"],
                                 3),
        # How much more CPU the trials got at 2 than at 1 (2.0 on an otherwise idle machine)
        "trial_cores_ratio": round(two["trial_cores"] / one["trial_cores"], 3),
        "driver_nice": os.nice(0),
        # The same for bare PyTorch processes, measured just before: what the machine allows
        "machine_ratio": machine["ratio"],
        "machine_steps_per_s_1_2_1": machine["steps_per_s"],
        "ratio_over_machine_ratio": round(ratio / machine["ratio"], 3),
        "claim_ratio_ge_1.7": ratio >= 1.7,
        "ray": ray_start,
        "quick": args.quick,
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
