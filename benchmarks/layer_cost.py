"""What does measuring every stage of the backbone cost? (issue "Where in the network")

Expected run time: about 2 minutes on a 2-core machine under load (`--epochs 2`: about 1).

Claim 1 (ratio <= 1.5): one evaluation with every stage tapped (`evaluation.layers: stages`:
the pooled output of each stage, its cdnv / cdnv_unbiased / nc1 / erank on source_train and
target, and NCC accuracy on every episode shape) takes at most 1.5x the evaluation without taps
(`layers: none`, the penultimate layer only, the behaviour before taps existed).

Claim 2 (fraction <= 0.35): the whole evaluation with every tap takes at most 0.35 of the
epoch's training time.

Both on the demo preset's default trial (its data, backbone and evaluation settings, torch
threads = `resources.cpus_per_trial`), run with `trainables.pretrain.Trainer` directly on the CPU.
After each training epoch the same model is evaluated both ways, in alternating order, so that a
change in the machine's load lands on both sides; the first epoch's evaluations (kernel warm-up)
are left out; ratios are of medians. Prints one JSON line, last.

    .venv/bin/python benchmarks/layer_cost.py [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from analysis import contract as names
from study.config import StudyConfig
from study.presets import read_preset
from trainables.evaluate import evaluate
from trainables.pretrain import Trainer


def timed_eval(trainer: Trainer, layers: str) -> tuple[float, int]:
    """Seconds of one `evaluate` with `evaluation.layers` = layers, and the metrics it returned."""
    ev = trainer.cfg.evaluation.model_copy(update={"layers": layers})
    start = time.perf_counter()
    out = evaluate(trainer.model, trainer.data, trainer.banks, ev, trainer.device)
    return time.perf_counter() - start, len(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (>= 2)")
    args = parser.parse_args()
    base = read_preset("demo")
    study = StudyConfig.model_validate({**base, "name": "layercost"})
    cfg = study.trial_config()
    threads = max(1, int(study.resources.cpus_per_trial))
    trainer = Trainer(cfg, threads=threads, device=torch.device("cpu"))
    train_s: list[float] = []
    timings: dict[str, list[float]] = {"stages": [], "none": []}
    counts: dict[str, int] = {}
    for epoch in range(1, max(2, args.epochs) + 1):
        trainer.epoch = epoch
        train_s.append(trainer.train_epoch()[names.TRAIN_TIME])
        order = ("stages", "none") if epoch % 2 else ("none", "stages")
        for layers in order:
            seconds, counts[layers] = timed_eval(trainer, layers)
            timings[layers].append(seconds)
    later = {k: v[1:] for k, v in timings.items()}
    med = {k: statistics.median(v) for k, v in later.items()}
    train_med = statistics.median(train_s[1:])
    print(json.dumps({
        "benchmark": "layer_cost",
        "preset": "demo",
        "taps": list(cfg.taps()),
        "threads": threads,
        "epochs": len(train_s),
        "train_s_median": round(train_med, 3),
        "eval_none_s_median": round(med["none"], 3),
        "eval_stages_s_median": round(med["stages"], 3),
        "eval_none_s": [round(t, 3) for t in timings["none"]],
        "eval_stages_s": [round(t, 3) for t in timings["stages"]],
        "metrics_none": counts["none"],
        "metrics_stages": counts["stages"],
        "ratio_stages_vs_none": round(med["stages"] / med["none"], 3),
        "claim_ratio_max": 1.5,
        "eval_fraction_of_train": round(med["stages"] / train_med, 3),
        "claim_fraction_max": 0.35,
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews both
    }))


if __name__ == "__main__":
    main()
