"""What do the transferability estimators add to an evaluation?

Claim (ratio <= 0.3): computing every estimator of `analysis.contract.ESTIMATORS` (LogME, H-score,
LEEP, NCE, GBC, SFDA, NCTI's three parts, k-NN) on the demo's target features takes at most 0.3
of the time of the demo's evaluation without them (`trainables.evaluate.evaluate` with
`evaluation.estimators: []`), both measured in this run on the same model and data.

The model is the demo preset's default trial (resnet18 at width 0.5: 256-wide features; 60
target classes x 20 images), built by `trainables.pretrain.Trainer` on the demo's cached glyphs
and trained `--train-epochs` epochs (default 1: the estimators' cost does not depend on
training, but an untrained network's features are degenerate). Both sides run `--repeats`
times, alternating, and the ratio is of medians. `--quick` uses a tiny config instead (tests).

    .venv/bin/python benchmarks/transfer_estimators.py [--repeats 3] [--train-epochs 1] [--quick]

Expected run time: about 1-2 minutes on a 2-core machine (the glyphs are generated once and
cached under NCTUNE_CACHE). Prints one JSON line, last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from analysis.contract import ESTIMATORS
from analysis.measure.transfer import transfer_metrics
from study.config import StudyConfig
from study.presets import read_preset
from trainables.config import TrialConfig
from trainables.evaluate import evaluate, extract
from trainables.pretrain import Trainer

TINY = {
    "dataset": {"name": "glyphs", "num_source_classes": 8, "num_target_classes": 8,
                "source_train_per_class": 6, "source_test_per_class": 3,
                "target_per_class": 8, "image_size": 16},
    "backbone": {"name": "test_resnet", "width": 1.0, "small_stem": True},
    "training": {"epochs": 1, "batch_size": 16, "lr": 0.05},
    "evaluation": {"episodes": 20, "queries": 3, "probe_episodes": 5, "features_per_class": 4},
}


def demo_config(quick: bool, epochs: int) -> TrialConfig:
    """The demo's default trial (or a tiny one), with estimators off for the baseline."""
    if quick:
        cfg = TrialConfig.model_validate(TINY)
    else:
        cfg = StudyConfig.model_validate(read_preset("demo")).trial_config()
    data = cfg.model_dump()
    data["training"]["epochs"] = max(1, epochs)
    data["evaluation"]["estimators"] = []
    return TrialConfig.model_validate(data)


def train(cfg: TrialConfig, epochs: int, threads: int) -> Trainer:
    trainer = Trainer(cfg, threads=threads, device=torch.device("cpu"))
    for _ in range(epochs):
        trainer.epoch += 1
        trainer.train_epoch()
    return trainer


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    cfg = demo_config(args.quick, args.train_epochs)
    trainer = train(cfg, args.train_epochs, args.threads)
    model, data, dev = trainer.model, trainer.data, trainer.device
    tgt = extract(model, data.target, dev)
    eval_s: list[float] = []
    est_s: list[float] = []
    per: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        t_eval, _ = timed(lambda: evaluate(model, data, trainer.banks, cfg.evaluation, dev))
        t_est, values = timed(lambda: transfer_metrics(tgt.features, tgt.labels, tgt.logits))
        eval_s.append(t_eval)
        est_s.append(t_est)
        for name in ESTIMATORS:  # one at a time, to show where the time goes
            t_one, _ = timed(lambda n=name: transfer_metrics(tgt.features, tgt.labels,
                                                             tgt.logits, [n]))
            per.setdefault(name, []).append(t_one)
    ratio = statistics.median(est_s) / statistics.median(eval_s)
    print(json.dumps({
        "benchmark": "transfer_estimators", "quick": args.quick, "threads": args.threads,
        "target_images": len(tgt.labels), "feature_dim": int(tgt.features.shape[1]),
        "target_classes": int(tgt.labels.unique().numel()), "repeats": args.repeats,
        "evaluate_s": round(statistics.median(eval_s), 4),
        "estimators_s": round(statistics.median(est_s), 4),
        "ratio": round(ratio, 4), "claim": 0.3, "holds": ratio <= 0.3,
        "per_estimator_s": {k: round(statistics.median(v), 4) for k, v in per.items()},
        "values": {k: round(v, 6) for k, v in values.items()},
    }))


if __name__ == "__main__":
    main()
