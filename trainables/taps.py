"""Taps: the stage outputs of a backbone, recorded during the evaluation's one forward pass.

A tap is a module named in the backbone's timm `feature_info` (`act1`, `layer1`, ... for the
ResNets; `blocks.0`, ... for ResNet-12; `conv1`, `groups.0`, ... for the WideResNet): the output of
one stage. `evaluation.layers` picks them: `stages` (all), `none`, or a list of names.

`TapRecorder` puts a forward hook on each tapped module for the duration of one extraction: the
hook globally average-pools the stage's (B, C, H, W) output to (B, C) as it passes, so the single
pass that computes the penultimate features also yields every tap (never one pass per layer),
and only C numbers per image and tap are kept. `layer_metrics` then measures each tap the way
`analysis.measure.layer_stats` defines, and the few-shot NCC accuracy on the study's episode bank.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from analysis import contract as names
from analysis.errors import InputError
from analysis.measure.fewshot import EpisodeBank, evaluate_episodes
from analysis.measure.layer_stats import tap_statistics

STAGES, NONE = "stages", "none"


def model_taps(model: nn.Module) -> tuple[str, ...]:
    """The tap names of a built backbone (a `Backbone` or its timm model), input to output."""
    inner = getattr(model, "model", model)
    info = getattr(inner, "feature_info", None)
    if not info:
        return ()
    return tuple(str(entry["module"]) for entry in info)


@functools.cache
def backbone_taps(name: str, small_stem: bool = True) -> tuple[str, ...]:
    """The tap names of a registered backbone, from an instance built on the meta device (no
    memory, no initialisation cost: ~50 ms once per name; cached).

    Raises:
        InputError: unknown backbone name.
    """
    from trainables.backbones import create_backbone  # timm: only when taps are asked for

    with torch.device("meta"):
        model = create_backbone(name, num_classes=2, in_chans=1, width=0.125,
                                small_stem=small_stem)
    return model_taps(model)


def select_taps(layers: str | Sequence[str], available: Sequence[str],
                backbone: str = "the backbone") -> tuple[str, ...]:
    """The taps `evaluation.layers` asks for, in the backbone's (input to output) order.

    Raises:
        InputError: a name that is not one of `available` (the message lists them).
    """
    if layers == STAGES:
        return tuple(available)
    if layers == NONE:
        return ()
    unknown = [tap for tap in layers if tap not in available]
    if unknown or isinstance(layers, str):
        raise InputError(
            f"evaluation.layers: {unknown or layers!r} is not a tap of backbone {backbone!r}; "
            f"its taps are {', '.join(available)} (or use 'stages' for all of them, "
            "'none' for the penultimate features only)")
    return tuple(tap for tap in available if tap in set(layers))


class TapRecorder:
    """Forward hooks that pool and keep the outputs of the tapped modules of one model.

    Example:
        with TapRecorder(backbone.model, ["layer1", "layer2"]) as rec:
            for x in batches:
                backbone.features(x)
        pooled = rec.result()  # {"layer1": (N, C1) float32, "layer2": (N, C2) float32}
    """

    def __init__(self, model: nn.Module, taps: Sequence[str]) -> None:
        self.model = getattr(model, "model", model)
        self.taps = tuple(taps)
        self.parts: dict[str, list[Tensor]] = {tap: [] for tap in self.taps}
        self._handles: list[Any] = []

    def _hook(self, tap: str) -> Any:
        def record(module: nn.Module, inputs: Any, output: Tensor) -> None:
            # Pool at once, in float32: later in-place ops cannot touch the copy, and only
            # (B, C) per batch is kept. (B, C, H, W) -> (B, C); a (B, C) output stays.
            out = output.mean(dim=tuple(range(2, output.ndim)), dtype=torch.float32) \
                if output.ndim > 2 else output.float()
            self.parts[tap].append(out.detach())

        return record

    def __enter__(self) -> TapRecorder:
        for tap in self.taps:
            module = self.model.get_submodule(tap)
            self._handles.append(module.register_forward_hook(self._hook(tap)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def result(self) -> dict[str, Tensor]:
        """Tap -> (N, C) pooled float32 outputs of every batch seen, in order."""
        return {tap: torch.cat(parts) for tap, parts in self.parts.items() if parts}


def layer_metrics(splits: dict[str, tuple[dict[str, Tensor], Tensor, int]],
                  banks: dict[str, EpisodeBank]) -> dict[str, float]:
    """Every `layer/<tap>/...` metric of one evaluation.

    Args:
        splits: split name -> (tap -> (N, C) pooled features, (N,) labels, number of classes).
            Must hold source_train (its per-tap mean centres the NCC features, as the
            penultimate's source-train mean does) and target (the episodes' split).
        banks: episode shape -> the study's bank on the target split.
    """
    out: dict[str, float] = {}
    for split, (taps, labels, num_classes) in splits.items():
        for tap, feats in taps.items():
            stats = tap_statistics(feats, labels, num_classes)
            out.update({names.layer_key(tap, family, split): float(stats[family])
                        for family in names.LAYER_FAMILIES})
    source, target = splits[names.SOURCE_TRAIN][0], splits[names.TARGET][0]
    for tap, feats in target.items():
        center = source[tap].mean(0)
        for shape, bank in banks.items():
            res = evaluate_episodes(feats, bank, names.PRIMARY_CLASSIFIER, center=center)
            out[names.layer_fewshot_key(tap, shape)] = float(res.mean)
    return out

