"""Is a data set held once per node, not once per trial? Memory of 4 concurrent trials.

Expected run time: about 4 minutes on a 2-core machine at load ~3 (up to ~12 under heavy load),
of which ~0.5 builds the 530 MB image folder and its split cache; `--quick` (a 140 MB set) ~2.

Claim (aim <= 0.5): running 4 concurrent trials on a data set of >= 500 MB instead of a tiny one
grows the trials' summed unique (private) memory, psutil's USS, by at most half the data set's
size; a copy per trial would give >= 4. The product shares the data through its memory-mapped
split cache (`trainables.data.cache`, .npy files under NCTUNE_CACHE opened copy-on-write): pages
that trials only read are the node's page cache, counted once, in nobody's USS.

How: two real studies through `study.run.driver.run_study` (local Ray with this machine's CPUs,
`resources.cpus_per_trial` 0.5, `search.max_concurrent` 4, so the 4 trials run at once with one
torch thread each, the MLflow callback on), first on a tiny data set, then on the large one. Both
are the `folder` data set (canonical split from split.json) over one folder of 128x128 RGB PNG
files generated here, and both use the same model, batch size and evaluation, so the trials'
own memory (torch, activations, features) is the same and only the data differs: the tiny split
still fills every training and evaluation batch, since smaller batches would need less
activation memory and flatter the figure. Each trial evaluates after every epoch (4 epochs on
the large set, 30 on the tiny one: all 4 must run at once for a while), so by its first report
it has read every image of all three splits (an epoch over source_train, then features of the
capped source_train, source_test and target). The driver finds the trials' worker processes
from their results (`pid`) and samples USS, PSS and RSS of all 4 twice a second while all 4 are
past their first report and none has finished; the figures are medians of the summed samples.
growth = (sum large - sum tiny) / (bytes large - bytes tiny), bytes being the split arrays'
sizes. USS near 0 and PSS near 1 mean one shared copy; RSS near 4 shows each trial really
touched every page; anonymous memory (smaps_rollup) is where copies would live. The data folder
and NCTUNE_CACHE are temporary (building them is measured and reported); this script starts its
own local Ray and shuts down only that one. Prints one JSON line, last.

    .venv/bin/python benchmarks/trial_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import ray
from PIL import Image
from ray import tune

from study.config import StudyConfig
from study.run.driver import run_study
from study.run.tuner import init_ray

TRIALS = 4
SIZE = 128  # RGB: 49,152 bytes per image
CLASSES = 10  # source classes; as many target classes
# Per-class images: source_train, source_test, target. The tiny set fills every batch
# (evaluation batches are 256 images: 10 classes x 26).
TINY = (26, 26, 26)
# The large set grows the source splits only: the target split (the few-shot bank) stays as in
# the tiny set, since the episodes' working memory grows with it (a Gram matrix of up to N^2
# entries), which is evaluation memory, not a copy of the data.
LARGE = (200, 850, 26)  # 10,760 images, 529 MB
QUICK_LARGE = (60, 200, 26)  # 2,860 images, 141 MB
# Epochs: the 4 workers start up to ~20 s apart on a busy machine, so each trial must run for
# a minute or more for all 4 to run at once for a while: an epoch of the tiny set takes seconds,
# one of the large set most of a minute. Nothing a trial holds grows with the epochs (results
# and checkpoints leave the worker).
EPOCHS = {"tiny": 30, "large": 4, "quick-large": 8}
MIN_SAMPLES = 5


def write_folder(root: Path, counts: tuple[int, int, int]) -> int:
    """CLASSES source + CLASSES target class folders of noisy PNGs and split.json; file count."""
    rng = np.random.default_rng(0)
    names = {"source": [f"s{c:02d}" for c in range(CLASSES)],
             "target": [f"t{c:02d}" for c in range(CLASSES)]}
    per_class = {"source": counts[0] + counts[1], "target": counts[2]}
    written = 0
    for part, classes in names.items():
        for name in classes:
            folder = root / name
            folder.mkdir(parents=True)
            tint = rng.integers(0, 128, size=3, dtype=np.uint8)
            for i in range(per_class[part]):
                pixels = rng.integers(0, 128, size=(SIZE, SIZE, 3), dtype=np.uint8) + tint
                Image.fromarray(pixels, "RGB").save(folder / f"{i:04d}.png", compress_level=1)
                written += 1
    (root / "split.json").write_text(json.dumps(names))
    return written


def study_config(name: str, root: str, images: str, counts: tuple[int, int, int],
                 quick: bool) -> StudyConfig:
    """`name` is "tiny" or "large"."""
    tr, te, tg = counts
    epochs = EPOCHS["quick-large" if quick and name == "large" else name]
    return StudyConfig.model_validate({
        "name": name,
        "dataset": {"name": "folder", "root": images, "split_mode": "canonical",
                    "num_source_classes": CLASSES, "num_target_classes": CLASSES,
                    "source_train_per_class": tr, "source_test_per_class": te,
                    "target_per_class": tg, "image_size": SIZE},
        # The cheapest network per pixel (the data, not the model, is what is measured).
        "backbone": {"name": "test_resnet", "width": 0.25, "small_stem": False},
        "training": {"epochs": epochs, "batch_size": 128, "lr": 0.05},
        "evaluation": {"eval_every": 1, "features_per_class": TINY[0],
                       "episodes": 50 if quick else 100, "probe_episodes": 10},
        "search": {"sampler": "random", "num_samples": TRIALS, "max_concurrent": TRIALS,
                   "seed": 0},
        "space": {"weight_decay": {"type": "log_float", "low": 1e-4, "high": 1e-3}},
        "resources": {"cpus_per_trial": 2 / TRIALS},
        "storage": {"root": root},
        "tracking": {"uri": f"sqlite:///{root}/mlflow.db"},
    })


class TrialWatch(tune.Callback):
    """Each trial's worker pid and last reported epoch; which trials have ended.

    Plain data only: Tune pickles its callbacks with the experiment.
    """

    def __init__(self) -> None:
        self.pid: dict[str, int] = {}
        self.epoch: dict[str, int] = {}
        self.ended: set[str] = set()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self.pid[trial.trial_id] = int(result["pid"])
        self.epoch[trial.trial_id] = int(result.get("epoch", 0))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)


def sample(watch: TrialWatch, stop: threading.Event, out: dict[str, Any], cache: str) -> None:
    """Twice a second while all trials are past their first report and none has ended: USS,
    PSS, RSS and anonymous bytes of each trial's worker process (one row per sample)."""
    rows: list[dict[int, dict[str, int]]] = []
    mapped: set[int] = set()
    started = ended = None
    while not stop.is_set():
        epochs = list(watch.epoch.values())  # a copy: the Tune loop adds to it
        ready = len(epochs) == TRIALS and min(epochs) >= 1
        if watch.ended:
            break
        if ready:
            pids = sorted(set(watch.pid.values()))
            try:
                infos = [psutil.Process(pid).memory_full_info() for pid in pids]
            except psutil.NoSuchProcess:
                break
            if started is None:
                started = time.monotonic()
                out["pids"] = pids
                # Do the trial processes map the cache files (rather than hold copies)?
                for pid in pids:
                    maps = Path(f"/proc/{pid}/maps").read_text()
                    if cache in maps:
                        mapped.add(pid)
            ended = time.monotonic()
            # Anonymous memory: where a copy of the data would live, whoever else maps the file
            rows.append({pid: {"uss": i.uss, "pss": i.pss, "rss": i.rss,
                               "anon": anonymous_bytes(pid)} for pid, i in zip(pids, infos,
                                                                               strict=True)})
        stop.wait(0.5)
    out["rows"] = rows
    out["window_s"] = 0.0 if started is None or ended is None else ended - started
    out["processes_mapping_cache"] = len(mapped)


def anonymous_bytes(pid: int) -> int:
    """The process's anonymous memory (smaps_rollup's `Anonymous`), in bytes."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) * 1024
    return 0


def start_ray() -> str:
    """The product's local Ray (`study.run.tuner.init_ray`: 127.0.0.1, never a recorded cluster)."""
    os.environ.pop("RAY_ADDRESS", None)
    init_ray(None)
    return "study.run.tuner.init_ray"


def measure(cfg: StudyConfig, cache: str) -> dict[str, Any]:
    """Run the study, sampling its trials' memory; medians of the summed samples, in MB."""
    watch = TrialWatch()
    stop = threading.Event()
    out: dict[str, Any] = {}
    thread = threading.Thread(target=sample, args=(watch, stop, out, cache), daemon=True)
    thread.start()
    try:
        state = run_study(cfg, report=False, callbacks=[watch])
    finally:
        stop.set()
        thread.join()
    rows = out["rows"]
    if state.status != "completed" or len(rows) < MIN_SAMPLES:
        raise RuntimeError(f"study '{cfg.name}' ended '{state.status}' with {len(rows)} memory "
                           "samples; 4 trials must run at once for a while (a busy machine "
                           "may need more epochs)")
    keys = ("uss", "pss", "rss", "anon")
    sums = {k: [sum(proc[k] for proc in row.values()) for row in rows] for k in keys}
    pids = sorted(rows[0])
    uss = {pid: [row[pid]["uss"] for row in rows] for pid in pids}
    return {**{f"{k}_mb": mb(statistics.median(sums[k])) for k in keys},
            # Each process's own median and low point: a trial sampled mid-batch holds its
            # activations too, and the tiny trials spend more of their time between batches.
            "uss_mb_per_trial": [mb(statistics.median(v)) for v in uss.values()],
            "uss_mb_sum_of_minima": mb(sum(min(v) for v in uss.values())),
            "uss_mb_sum_of_maxima": mb(sum(max(v) for v in uss.values())),
            "samples": len(rows), "window_s": round(out["window_s"], 1),
            "processes": len(pids), "processes_mapping_cache": out["processes_mapping_cache"]}


def mb(value: float) -> float:
    return round(value / 1e6, 1)


def data_bytes(cfg: StudyConfig) -> int:
    from trainables.data import load_splits

    splits = load_splits(cfg.dataset)
    return sum(int(s.images.nbytes + s.labels.nbytes)
               for s in (splits.source_train, splits.source_test, splits.target))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run on a 141 MB set")
    args = parser.parse_args()
    load_start = os.getloadavg()
    large = QUICK_LARGE if args.quick else LARGE
    with tempfile.TemporaryDirectory(prefix="nctune-mem-") as tmp:
        # The trials' cache, inherited by Ray's workers: set before Ray starts.
        cache = os.environ["NCTUNE_CACHE"] = str(Path(tmp) / "cache")
        images = Path(tmp) / "images"
        start = time.perf_counter()
        files = write_folder(images, large)
        write_s = time.perf_counter() - start
        tiny_cfg = study_config("tiny", tmp, str(images), TINY, args.quick)
        large_cfg = study_config("large", tmp, str(images), large, args.quick)
        start = time.perf_counter()
        large_bytes = data_bytes(large_cfg)  # decodes the PNGs into the split cache
        cache_s = time.perf_counter() - start
        tiny_bytes = data_bytes(tiny_cfg)
        ray_start = start_ray()
        try:
            tiny = measure(tiny_cfg, cache)
            big = measure(large_cfg, cache)
        finally:
            ray.shutdown()
    grown = (large_bytes - tiny_bytes) / 1e6

    def growth(key: str) -> float:
        key = key if key.endswith(("minima", "maxima")) else f"{key}_mb"
        return round((big[key] - tiny[key]) / grown, 3)

    result = {
        "benchmark": "trial_memory",
        "trials": TRIALS,
        "cpus_per_trial": 2 / TRIALS,
        "dataset": f"folder, {SIZE}x{SIZE} RGB PNG, {CLASSES}+{CLASSES} classes, "
                   "model test_resnet width 0.25, evaluated every epoch",
        "epochs": EPOCHS,
        "tiny_mb": round(tiny_bytes / 1e6, 1),
        "large_mb": round(large_bytes / 1e6, 1),
        "large_images": files,
        "build_png_s": round(write_s, 1),
        "build_split_cache_s": round(cache_s, 1),
        "tiny": tiny,
        "large": big,
        "uss_growth_x": growth("uss"),
        "pss_growth_x": growth("pss"),
        "rss_growth_x": growth("rss"),
        "anon_growth_x": growth("anon"),
        "uss_growth_x_of_minima": growth("uss_mb_sum_of_minima"),
        "uss_growth_x_of_maxima": growth("uss_mb_sum_of_maxima"),
        "claim_uss_growth_le_0.5": growth("uss") <= 0.5,
        "ray": ray_start,
        "quick": args.quick,
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
