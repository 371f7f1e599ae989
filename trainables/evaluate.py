"""One evaluation of a trial: features once per split, then every metric of the contract.

Features of source_train (capped per class), source_test and target come from one forward pass
each in eval mode; every collapse and few-shot metric reads those tensors, so nothing is
extracted twice. Names come from analysis/contract.py (docs/design-notes.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from analysis import contract as names
from analysis.contract import parse_shape
from analysis.measure.bound import ncc_error_bound
from analysis.measure.collapse import collapse_metrics
from analysis.measure.collapse_stats import class_stats
from analysis.measure.fewshot import EpisodeBank, evaluate_episodes, sample_episodes
from trainables.augment import normalize
from trainables.config import EvaluationConfig
from trainables.data import DataSplits, Split
from trainables.evaluate_transfer import transfer_and_bound
from trainables.taps import TapRecorder, layer_metrics, model_taps, select_taps


class DivergedError(RuntimeError):
    """The model's features are no longer finite numbers: the trial has diverged."""


@dataclass
class Features:
    """One split's penultimate features, source-head logits and labels, extracted once and shared by
    every metric."""
    features: torch.Tensor  # (N, d) float32
    logits: torch.Tensor  # (N, num_source_classes)
    labels: torch.Tensor  # (N,) int64
    taps: dict[str, torch.Tensor] = field(default_factory=dict)  # tap -> (N, C) pooled float32


def capped_indices(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """The first `per_class` images of each class (deterministic, no loop over classes), as
    indices on the labels' device."""
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    first = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.arange(len(labels), device=labels.device) - first
    return torch.sort(order[rank < per_class]).values


@torch.inference_mode()
def extract(model: torch.nn.Module, split: Split, device: torch.device, *,
            index: torch.Tensor | None = None, batch_size: int = 256,
            amp: bool = False, channels_last: bool = False,
            taps: Sequence[str] = ()) -> Features:
    """Penultimate features and logits of a split, in eval mode, and the pooled outputs of
    `taps` (trainables.taps) from the same forward pass.

    The split's images are gathered where they live (the GPU in a GPU trial, so no batch is
    copied from the host) and moved to `device` only if they are elsewhere.
    """
    was_training = model.training
    model.eval()
    home = split.images.device
    idx = (index.to(home) if index is not None
           else torch.arange(len(split.labels), device=home))
    feats, logits = [], []
    with TapRecorder(model, taps) as recorder:
        for start in range(0, len(idx), batch_size):
            batch = idx[start : start + batch_size]
            x = normalize(split.images[batch].to(device, non_blocking=True))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                f = model.features(x)  # type: ignore[operator]
            f = f.float()
            feats.append(f)
            logits.append(model.classifier(f).float())  # type: ignore[operator]
    model.train(was_training)
    out = Features(torch.cat(feats), torch.cat(logits),
                   split.labels[idx.to(split.labels.device)].to(device), recorder.result())
    if not all(torch.isfinite(t.sum()) for t in (out.features, *out.taps.values())):
        raise DivergedError("non-finite features")
    return out


def build_banks(target: Split, ev: EvaluationConfig) -> dict[str, EpisodeBank]:
    """The study's fixed episode banks: the same seed and target split give every trial the
    same episodes, so trials are compared on identical tasks."""
    banks = {}
    for shape in ev.shapes:
        n_way, k_shot = parse_shape(shape)
        banks[shape] = sample_episodes(target.labels, n_way=n_way, k_shot=k_shot,
                                       q_query=ev.queries, episodes=ev.episodes,
                                       seed=ev.episode_seed)
    return banks


def evaluate(model: torch.nn.Module, data: DataSplits, banks: dict[str, EpisodeBank],
             ev: EvaluationConfig, device: torch.device, *, amp: bool = False,
             channels_last: bool = False) -> dict[str, float]:
    """Every evaluation metric the contract (analysis/contract.py) names, for the model now."""
    start = time.perf_counter()
    cap = capped_indices(data.source_train.labels, ev.features_per_class)
    taps = select_taps(ev.layers, model_taps(model), str(getattr(model, "name", "")))
    src = extract(model, data.source_train, device, index=cap, amp=amp,
                  channels_last=channels_last, taps=taps)
    test = extract(model, data.source_test, device, amp=amp, channels_last=channels_last,
                   taps=taps if ev.layers_source_test else ())
    tgt = extract(model, data.target, device, amp=amp, channels_last=channels_last, taps=taps)
    out: dict[str, float] = {
        names.SOURCE_TEST_ACC: (test.logits.argmax(1) == test.labels).float().mean().item()
    }
    weight = model.classifier.weight.detach().float()  # type: ignore[union-attr,operator]
    src_metrics = collapse_metrics(src.features, src.labels, classifier_weight=weight)
    src_means = class_stats(src.features, src.labels,
                            len(data.source_train.class_names)).means
    test_metrics = collapse_metrics(test.features, test.labels, logits=test.logits,
                                    means_for_nc4=src_means)
    for split, metrics in ((names.SOURCE_TRAIN, src_metrics), (names.SOURCE_TEST, test_metrics)):
        out.update({names.collapse_key(family, split): float(metrics[family])
                    for family in names.COLLAPSE_FAMILIES})
    out[names.NC3_SOURCE] = float(src_metrics["nc3"])
    out[names.NC4_SOURCE_TEST] = float(test_metrics["nc4"])
    out.update(evaluate_target(tgt, banks, ev, center=src.features.mean(0)))
    if taps:
        measured = ((names.SOURCE_TRAIN, src, data.source_train),
                    (names.SOURCE_TEST, test, data.source_test), (names.TARGET, tgt, data.target))
        out.update(layer_metrics({split: (f.taps, f.labels, len(part.class_names))
                                  for split, f, part in measured if f.taps}, banks))
    out[names.EVAL_TIME] = time.perf_counter() - start
    return out


def evaluate_target(tgt: Features, banks: dict[str, EpisodeBank], ev: EvaluationConfig,
                    center: torch.Tensor) -> dict[str, float]:
    """Every metric measured on the target features alone: collapse, few-shot, bound.

    Kept apart from `evaluate` so `nctune probe` (trainables.probe) runs exactly this on another
    domain's images, with a trained or a pretrained backbone: whatever is measured on the
    target here is measured by a probe too. `center` is the vector features are centred on
    before the few-shot classifiers (the source-train mean in a trial).
    """
    metrics = collapse_metrics(tgt.features, tgt.labels)
    out = {names.collapse_key(family, names.TARGET): float(metrics[family])
           for family in names.COLLAPSE_FAMILIES}
    for shape, bank in banks.items():
        out.update(fewshot_metrics(tgt.features, bank, shape, ev, center))
        n_way, k_shot = parse_shape(shape)
        cdnv_target = out[names.CDNV_TARGET]
        out[names.bound_key(shape)] = float(ncc_error_bound(cdnv_target, n_way, k_shot))
    out.update(transfer_and_bound(tgt.features, tgt.labels, tgt.logits, ev.estimators, banks,
                                  center))
    return out


def fewshot_metrics(features: torch.Tensor, bank: EpisodeBank, shape: str,
                    ev: EvaluationConfig, center: torch.Tensor) -> dict[str, float]:
    """Accuracy and ci95 of every configured classifier on one shape's episode bank (the logistic
    probe on fewer episodes: it is the slow one)."""
    out = {}
    for clf in ev.classifiers:
        limit = ev.probe_episodes if clf == "logreg" else None
        res = evaluate_episodes(features, bank, clf, center=center, max_episodes=limit)
        out[names.fewshot_key(shape, clf, "acc")] = float(res.mean)
        out[names.fewshot_key(shape, clf, "ci95")] = float(res.ci95)
    return out

