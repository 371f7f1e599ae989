"""Does the Cantelli bound say something on demo features, where the CDNV bound does not?

Claim (the goal of the transferability issue): the Cantelli bound on the 5-way 5-shot NCC error
(`bound_cantelli/5w5s`) is non-vacuous (< 1) on most final-epoch points of the demo, and holds.
A whole demo study is not needed to look: this trains the demo preset's default trial (or, with
`--trials N`, N trials with the demo space's corner values of weight decay and label smoothing)
for `--epochs` epochs with `trainables.pretrain.Trainer` and evaluates both bounds every epoch
against the observed NCC error of the study's episode bank (the CDNV bound against `ncc_raw`,
the classifier it is about; the Cantelli bound against the primary `ncc`).

    .venv/bin/python benchmarks/bound_demo.py [--epochs 4] [--trials 1] [--quick]

Expected run time: about 1.5 minutes per trial-epoch on a 2-core machine. Prints one JSON line,
last.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

import torch

from analysis import contract as names
from study.config import StudyConfig
from study.presets import read_preset
from trainables.config import TrialConfig
from trainables.pretrain import Trainer

TINY = {
    "dataset": {"name": "glyphs", "num_source_classes": 8, "num_target_classes": 8,
                "source_train_per_class": 6, "source_test_per_class": 3,
                "target_per_class": 8, "image_size": 16},
    "backbone": {"name": "test_resnet", "width": 1.0, "small_stem": True},
    "training": {"batch_size": 16, "lr": 0.05},
    "evaluation": {"episodes": 20, "queries": 3, "probe_episodes": 5, "features_per_class": 4},
}
# Corners of the demo's search space for weight decay and label smoothing.
VARIANTS = [{}, {"weight_decay": 1e-2, "label_smoothing": 0.3},
            {"weight_decay": 1e-5, "label_smoothing": 0.0}, {"weight_decay": 1e-2}]


def configs(quick: bool, epochs: int, trials: int) -> list[TrialConfig]:
    """The demo's default trial and up to three corner variants, estimators off (not needed)."""
    if quick:
        base = TrialConfig.model_validate(TINY).model_dump()
    else:
        base = StudyConfig.model_validate(read_preset("demo")).trial_config().model_dump()
    out = []
    for variant in VARIANTS[:trials]:
        data = {k: dict(v) for k, v in base.items()}
        data["training"].update({"epochs": epochs, **variant})
        data["evaluation"].update({"estimators": [], "classifiers": ["ncc", "ncc_raw"]})
        out.append(TrialConfig.model_validate(data))
    return out


def points(cfg: TrialConfig, threads: int) -> list[dict[str, Any]]:
    """Per evaluated epoch: both bounds and the errors they bound."""
    rows: list[dict[str, Any]] = []

    def record(metrics: dict[str, Any], state: Any) -> None:
        if names.bound_cantelli_key("5w5s") not in metrics:
            return
        rows.append({
            "epoch": metrics["epoch"],
            "cantelli": float(metrics[names.bound_cantelli_key("5w5s")]),
            "cdnv_bound": float(metrics[names.bound_key("5w5s")]),
            "ncc_error": 1 - float(metrics[names.fewshot_key("5w5s", "ncc")]),
            "ncc_raw_error": 1 - float(metrics[names.fewshot_key("5w5s", "ncc_raw")]),
        })

    Trainer(cfg, threads=threads, device=torch.device("cpu")).fit(record)
    return rows


def summary(rows: list[dict[str, Any]], bound: str, error: str) -> dict[str, float]:
    ratios = [r[bound] / r[error] for r in rows if r[error] > 0]
    return {"points": len(rows),
            "holds_frac": sum(r[bound] >= r[error] for r in rows) / len(rows),
            "non_vacuous_frac": sum(r[bound] < 1 for r in rows) / len(rows),
            "median_ratio": statistics.median(ratios) if ratios else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--trials", type=int, default=1, choices=range(1, len(VARIANTS) + 1))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    per_trial = [points(cfg, args.threads) for cfg in configs(args.quick, args.epochs,
                                                               args.trials)]
    every = [r for rows in per_trial for r in rows]
    final = [rows[-1] for rows in per_trial]
    print(json.dumps({
        "benchmark": "bound_demo", "quick": args.quick, "trials": args.trials,
        "epochs": args.epochs, "shape": "5w5s",
        "cantelli_vs_ncc": summary(every, "cantelli", "ncc_error"),
        "cantelli_vs_ncc_final": summary(final, "cantelli", "ncc_error"),
        "cdnv_vs_ncc_raw": summary(every, "cdnv_bound", "ncc_raw_error"),
        "points": [{k: round(v, 4) for k, v in r.items()} for r in every],
    }))


if __name__ == "__main__":
    main()
