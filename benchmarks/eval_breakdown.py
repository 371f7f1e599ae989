"""Where an evaluation's time goes: each part of `trainables.evaluate.evaluate`, timed apart.

Expected run time: about 1 minute on one GPU; `--cpu` (toy sizes) about 1 minute on 2 cores.

Claim (report, goal `eval_share` <= 0.10 on a GPU): with every stage tapped and every estimator
on, the evaluation's share of an epoch, `eval_s / (train_s + eval_s)`, of the `gpu-proof`
preset's trial (benchmarks/gpu_proof.sh measures the same share inside a real study).

How: one Trainer of the preset's first trial (seed 0) on the device, holding `--threads` CPU
threads (1: what the preset's `cpus_per_trial` gives a trial); one training epoch (so features
are not those of random weights) and one untimed evaluation (cuDNN autotuning, first kernels).
Then `--repeats` times: a training epoch, the whole `evaluate()`, and each of its parts on the
same features (extraction of each split, collapse statistics per split, each few-shot classifier
per shape, the bound, each transferability estimator, the per-tap statistics and episodes),
each between device synchronisations; medians over the repeats. The parts are the functions
`evaluate` calls, called the way it calls them, so their sum is close to the whole
(`parts_over_whole`). Baseline measured in the same run: every estimator and the bound on the
CPU (the features copied there, float64, the trial's threads), as they ran before they moved to
the features' device: `estimators.cpu_over_device`. Prints one JSON line, last, with the parts
sorted, slowest first.

    python benchmarks/eval_breakdown.py [--device cuda] [--repeats 3] [--threads 1] [--cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from analysis import contract as names
from analysis.measure.collapse import collapse_metrics
from analysis.measure.collapse_stats import class_stats
from analysis.measure.fewshot import evaluate_episodes
from study.presets import load_study_config
from trainables.evaluate import capped_indices, evaluate, extract
from trainables.evaluate_transfer import transfer_and_bound
from trainables.pretrain import Trainer
from trainables.taps import layer_metrics, model_taps, select_taps, tap_statistics

PRESET = "gpu-proof"
CPU_OVERRIDES = [
    "dataset.num_source_classes=8", "dataset.num_target_classes=5",
    "dataset.source_train_per_class=16", "dataset.source_test_per_class=4",
    "dataset.target_per_class=20", "backbone.width=0.125", "training.batch_size=32",
    "training.amp=false", "training.channels_last=false", "training.device=cpu",
    "evaluation.features_per_class=4", "evaluation.episodes=20", "evaluation.probe_episodes=5",
    "resources.gpus_per_trial=0",
]


def timer(device: torch.device) -> Callable[[Callable[[], Any]], tuple[float, Any]]:
    """A function that runs `fn` between two device synchronisations: (seconds, result)."""
    def run(fn: Callable[[], Any]) -> tuple[float, Any]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, result
    return run


def parts(trainer: Trainer) -> dict[str, float]:
    """Seconds of each part of one evaluation, called as `evaluate` calls them."""
    cfg, data, model, dev = trainer.cfg, trainer.data, trainer.model, trainer.device
    ev, tr, run = cfg.evaluation, cfg.training, timer(trainer.device)
    opts = {"amp": tr.amp, "channels_last": tr.channels_last}
    taps = select_taps(ev.layers, model_taps(model), str(getattr(model, "name", "")))
    cap = capped_indices(data.source_train.labels, ev.features_per_class)
    out: dict[str, float] = {}
    out["extract/source_train"], src = run(lambda: extract(model, data.source_train, dev,
                                                           index=cap, taps=taps, **opts))
    out["extract/source_test"], test = run(lambda: extract(
        model, data.source_test, dev, taps=taps if ev.layers_source_test else (), **opts))
    out["extract/target"], tgt = run(lambda: extract(model, data.target, dev, taps=taps, **opts))
    weight = model.classifier.weight.detach().float()  # type: ignore[union-attr,operator]
    out["collapse/source_train"], _ = run(lambda: collapse_metrics(
        src.features, src.labels, classifier_weight=weight))
    n_src = len(data.source_train.class_names)
    out["collapse/source_test"], _ = run(lambda: collapse_metrics(
        test.features, test.labels, logits=test.logits,
        means_for_nc4=class_stats(src.features, src.labels, n_src).means))
    out["collapse/target"], _ = run(lambda: collapse_metrics(tgt.features, tgt.labels))
    center = src.features.mean(0)
    for shape, bank in trainer.banks.items():
        for clf in ev.classifiers:
            limit = ev.probe_episodes if clf == "logreg" else None
            out[f"fewshot/{shape}/{clf}"], _ = run(lambda b=bank, c=clf, n=limit: (
                evaluate_episodes(tgt.features, b, c, center=center, max_episodes=n)))
    for est in ev.estimators:
        out[f"transfer/{est}"], _ = run(lambda e=est: transfer_and_bound(
            tgt.features, tgt.labels, tgt.logits, [e], [], center))
    out["bound_cantelli"], _ = run(lambda: transfer_and_bound(
        tgt.features, tgt.labels, tgt.logits, [], list(trainer.banks), center))
    measured = {split: (f.taps, f.labels, len(part.class_names)) for split, f, part in (
        (names.SOURCE_TRAIN, src, data.source_train), (names.SOURCE_TEST, test,
                                                         data.source_test),
        (names.TARGET, tgt, data.target)) if f.taps}
    stats_s, _ = run(lambda: [tap_statistics(feats, labels, k) for feats_by_tap, labels, k
                              in measured.values() for feats in feats_by_tap.values()])
    out["layers/statistics"] = stats_s
    if measured:
        all_s, _ = run(lambda: layer_metrics(measured, trainer.banks))
        out["layers/episodes"] = max(0.0, all_s - stats_s)
    return out


def estimators_where(trainer: Trainer) -> dict[str, float]:
    """Seconds of every estimator and the bound on the trial's device and on the CPU."""
    ev, data, run = trainer.cfg.evaluation, trainer.data, timer(trainer.device)
    tgt = extract(trainer.model, data.target, trainer.device, amp=trainer.cfg.training.amp,
                  channels_last=trainer.cfg.training.channels_last)
    center = tgt.features.mean(0)  # where the features are centred matters not for the time
    shapes = list(trainer.banks)
    here, _ = run(lambda: transfer_and_bound(tgt.features, tgt.labels, tgt.logits,
                                             ev.estimators, shapes, center))
    cpu, _ = run(lambda: transfer_and_bound(tgt.features.cpu(), tgt.labels.cpu(),
                                            tgt.logits.cpu(), ev.estimators, shapes,
                                            center.cpu()))
    return {"on_device": here, "on_cpu": cpu}


def main() -> None:
    """Time one evaluation and its parts; print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpu", action="store_true", help="toy sizes on the CPU (tests use it)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a preset override, e.g. evaluation.probe_episodes=50")
    args = ap.parse_args()
    device = torch.device("cpu" if args.cpu else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"benchmark": "eval_breakdown", "gpu": None, "note": "no GPU found"}))
        return
    study = load_study_config(PRESET, (CPU_OVERRIDES if args.cpu else []) + args.set)
    cfg = study.trial_config().model_copy(deep=True)
    trainer = Trainer(cfg, threads=args.threads, device=device)
    run = timer(device)
    trainer.epoch = 1
    run(trainer.train_epoch)
    run(lambda: evaluate(trainer.model, trainer.data, trainer.banks, cfg.evaluation, device,
                         amp=cfg.training.amp, channels_last=cfg.training.channels_last))
    samples: dict[str, list[float]] = defaultdict(list)
    for rep in range(args.repeats):
        trainer.epoch = 2 + rep
        samples["train_epoch"].append(run(trainer.train_epoch)[0])
        samples["evaluate"].append(run(lambda: evaluate(
            trainer.model, trainer.data, trainer.banks, cfg.evaluation, device,
            amp=cfg.training.amp, channels_last=cfg.training.channels_last))[0])
        for key, seconds in parts(trainer).items():
            samples[key].append(seconds)
        for key, seconds in estimators_where(trainer).items():
            samples[f"estimators_{key}"].append(seconds)
    med = {k: round(statistics.median(v), 4) for k, v in samples.items()}
    train_s, eval_s = med.pop("train_epoch"), med.pop("evaluate")
    where = {k: med.pop(f"estimators_{k}") for k in ("on_device", "on_cpu")}
    print(json.dumps({
        "benchmark": "eval_breakdown", "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": args.threads, "overrides": args.set, "train_epoch_s": train_s,
        "eval_s": eval_s, "eval_share": round(eval_s / (train_s + eval_s), 3),
        "parts_over_whole": round(sum(med.values()) / eval_s, 3),
        "parts_s": dict(sorted(med.items(), key=lambda kv: -kv[1])),
        "estimators": {**where, "cpu_over_device": round(where["on_cpu"]
                                                         / max(where["on_device"], 1e-9), 2)},
    }))


if __name__ == "__main__":
    main()
