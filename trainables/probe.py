"""One probe job: a trial's checkpoints, or a zoo model's weights, measured on another target.

A job rebuilds the backbone (from the trial's flat config, or a timm architecture), loads its
weights with `weights_only=True` (a checkpoint is data, never code), adapts the target images
to what the backbone was trained on (`probe_data.adapt_images`), extracts features once per
checkpoint and runs the trial's own target-side evaluation on them
(`trainables.evaluate.evaluate_target`): collapse, few-shot accuracy on the probe's episode
bank, the bound, and whatever else that function measures. So a probe measures what a trial
measures on its target, nothing invented here.

Few-shot features are centred on the mean of the probe's target features before the classifiers
(a trial centres on its source-train mean, which a zoo model does not have): the same rule for
every job of a probe, so trials and models compare.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from analysis import contract as names
from analysis.errors import InputError
from trainables.augment import MEAN, STD
from trainables.backbones import Backbone, create_backbone
from trainables.config import EvaluationConfig, TrialConfig
from trainables.data import Split
from trainables.evaluate import Features, evaluate_target, extract
from trainables.probe_data import adapt_images
from trainables.taps import layer_metrics, model_taps, select_taps

# The weights file inside a folder (a Hugging Face / timm cache snapshot), in order of preference.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass(frozen=True)
class ProbeJob:
    """What one Ray task probes.

    Attributes:
        label: the run's short name (`t003`, or the zoo entry's name).
        checkpoints: (epoch, file) pairs: trial.pt files of a trial, or one weights file.
        config: the trial's flat config (a trial), or {"arch", "image_size"} (a zoo model).
        zoo: True for a zoo model.
        run_id: the MLflow run the results go to (the driver logs them, never the task).
    """

    label: str
    checkpoints: list[tuple[int, str]]
    config: dict[str, Any]
    zoo: bool = False
    run_id: str = ""


@dataclass
class ProbeResult:
    """Metrics per epoch (the step each is logged at), what was adapted, and the cost."""

    label: str
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    adaptation: str = ""
    seconds: float = 0.0


# ---- weights --------------------------------------------------------------------------------
def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors, .pth/.pt/.bin file or a cache folder holding one.

    Raises:
        InputError: no such file, no weights file in the folder, or a file that does not load
            as plain tensors (a tampered or non-weights file: loads stay weights_only).
    """
    file = weights_file(Path(path).expanduser())
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(file), device="cpu")
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, safetensors' HeaderTooLarge, truncated files
        raise InputError(f"weights file {str(file)!r} does not load as plain tensors "
                         f"(loads stay weights_only): {first_line(exc)}") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common training-script wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"weights file {str(file)!r} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def weights_file(path: Path) -> Path:
    """`path` itself, or the weights file inside a cache folder (newest snapshot first)."""
    if path.is_file():
        return path
    if path.is_dir():
        for name in WEIGHT_FILES:
            found = sorted(path.rglob(name), key=lambda p: p.stat().st_mtime, reverse=True)
            if found:
                return found[0]
        found = sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
        if found:
            return found[0]
        raise InputError(f"weights: no weights file ({', '.join(WEIGHT_FILES)}, "
                         f"*{', *'.join(WEIGHT_SUFFIXES)}) under {str(path)!r}")
    raise InputError(f"weights: no file or folder {str(path)!r}")


def first_line(exc: BaseException) -> str:
    """The first line of an error, shortened: what a one-line CLI error can carry."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A trial checkpoint (trainables.checkpoint's file), weights_only, memory-mapped.

    Raises:
        InputError: a file that does not load as plain data (tampered, truncated).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise InputError(f"checkpoint {str(path)!r} does not load as plain tensors "
                         f"(loads stay weights_only): {first_line(exc)}") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise InputError(f"checkpoint {str(path)!r} is not an nctune trial checkpoint")
    return cast(dict[str, Any], state)


# ---- backbones ------------------------------------------------------------------------------
def in_channels(state: dict[str, torch.Tensor], first_conv: str | None = None) -> int:
    """Input channels of a conv net's weights: those of `first_conv` (timm's name of the stem)
    when the weights hold it, else of the first 4-D weight in the file's order (the stem, for a
    file torch.save wrote; safetensors files sort their keys, hence `first_conv`)."""
    stem = state.get(f"{first_conv}.weight") if first_conv else None
    first = stem if stem is not None else next((v for v in state.values() if v.ndim == 4), None)
    return 3 if first is None else int(first.shape[1])


def trial_backbone(config: dict[str, Any], state: dict[str, torch.Tensor]) -> Backbone:
    """The trial's backbone, rebuilt from its flat config, with the checkpoint's weights."""
    cfg = TrialConfig.from_flat(config)
    bb = cfg.backbone
    model = create_backbone(bb.name, num_classes=cfg.dataset.num_source_classes,
                            in_chans=in_channels(state), width=bb.width,
                            small_stem=bb.small_stem)
    model.load_state_dict(state)
    return model


class ZooBackbone(nn.Module):
    """A timm model from a weights file, with the `features` / `classifier` view of `Backbone`.

    Inputs arrive normalised the nctune way ((x / 255 - MEAN) / STD, as `extract` does); they
    are renormalised with the model's own mean and std (its timm pretrained config) first.
    A model without a classification head gets an identity `classifier` (its "logits" are then
    its features).
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model: Any = model
        cfg = getattr(model, "pretrained_cfg", None) or {}
        chans = int(getattr(model, "in_chans", 3) or 3)
        mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
        if len(mean) != chans:  # a grayscale model with RGB statistics: their channel average
            mean, std = mean.mean().repeat(chans), std.mean().repeat(chans)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", mean[None, :, None, None], persistent=False)
        self.register_buffer("std", std[None, :, None, None], persistent=False)
        head = model.get_classifier() if hasattr(model, "get_classifier") else None
        self.classifier: nn.Module = head if isinstance(head, nn.Linear) else nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: timm's forward_head(pre_logits=True) on renormalised input."""
        x = ((x * STD + MEAN) - self.mean) / self.std
        return cast(torch.Tensor, self.model.forward_head(self.model.forward_features(x),
                                                          pre_logits=True))


def zoo_backbone(arch: str, state: dict[str, torch.Tensor], source: str) -> ZooBackbone:
    """timm `arch` with the weights of `state`, fitted strictly.

    The head size and input channels are read off the weights (a 10-class head, a grayscale
    stem), so any fine-tuned copy of an architecture loads.

    Raises:
        InputError: an unknown architecture, or weights that do not fit it (missing or unexpected
            keys, shape mismatches), naming the file.
    """
    import difflib

    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        raise InputError(f"arch: {arch!r} is not a timm architecture"
                         + (f"; did you mean {', '.join(close)}?" if close else ""))
    probe: Any = timm.create_model(arch, pretrained=False)
    cfg: dict[str, Any] = dict(probe.pretrained_cfg or {})
    head = cfg.get("classifier")
    heads = [head] if isinstance(head, str) else list(head or [])
    num_classes = next((int(state[f"{h}.weight"].shape[0]) for h in heads
                        if f"{h}.weight" in state), 0)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes,
                              in_chans=in_channels(state, cfg.get("first_conv")))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise InputError(f"weights file {source!r} does not fit timm architecture {arch!r}: "
                         f"{detail[:400]}") from None
    return ZooBackbone(model)


def job_backbone(job: ProbeJob, path: str) -> tuple[nn.Module, int, int]:
    """(model in eval mode, input channels, input size) for one checkpoint of a job."""
    if job.zoo:
        zoo = zoo_backbone(str(job.config["arch"]), read_weights(path), path)
        model: nn.Module = zoo
        channels = int(zoo.model.in_chans)
    else:
        state = read_checkpoint(path)["model"]
        model, channels = trial_backbone(job.config, state), in_channels(state)
    return model.eval(), channels, int(job.config["image_size"])


# ---- the job --------------------------------------------------------------------------------
def run_job(job: ProbeJob, target: Split, banks: dict[str, Any], ev: EvaluationConfig,
            device: torch.device, *, threads: int = 1) -> ProbeResult:
    """Probe every checkpoint of `job` on `target`; metrics keyed by epoch (a zoo model: 0).

    Raises:
        InputError: a checkpoint or weights file that does not load or fit.
        DivergedError: features that are not finite numbers.
    """
    torch.set_num_threads(max(1, threads))
    start = time.perf_counter()
    result = ProbeResult(job.label)
    banks = {shape: bank.to(device) for shape, bank in banks.items()}
    for epoch, path in job.checkpoints:
        model, channels, size = job_backbone(job, path)
        images, result.adaptation = adapt_images(target.images, channels, size)
        split = Split(images, target.labels, target.class_names).to(device)
        taps = select_taps(ev.layers, model_taps(model), job.label)
        feats = extract(model.to(device), split, device, taps=taps)
        metrics = evaluate_target(feats, banks, ev, center=feats.features.mean(0))
        if feats.taps:
            metrics.update(target_layer_metrics(feats, split.num_classes, banks))
        result.metrics[epoch] = metrics
    result.seconds = time.perf_counter() - start
    return result


def target_layer_metrics(feats: Features, num_classes: int,
                         banks: dict[str, Any]) -> dict[str, float]:
    """The per-tap metrics of the target split alone (`layer/<tap>/<metric>/target` and each
    tap's NCC accuracy), through `trainables.taps.layer_metrics`.

    That function centres each tap's few-shot features on the source-train mean of the tap; a
    probe has no source split, so the target's own taps stand in for it (each tap centred on
    its target mean, the rule of the penultimate features here) and the source_train numbers
    that this yields are dropped.
    """
    stand_in = {names.SOURCE_TRAIN: (feats.taps, feats.labels, num_classes),
                names.TARGET: (feats.taps, feats.labels, num_classes)}
    out = layer_metrics(stand_in, banks)
    return {k: v for k, v in out.items() if not k.endswith("/" + names.SOURCE_TRAIN)}

