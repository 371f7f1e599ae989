"""Backbones: a registry of timm models with a width multiplier and a small-image stem.

Every backbone is a timm model registered with `timm.models.register_model` under an `nctune_`
name (so `timm.create_model("nctune_resnet18", width=2.0)` works anywhere timm does), and with
`register_backbone` under the short name a study config uses (`backbone: resnet18`).
`create_backbone` builds one through `timm.create_model` and wraps it in `Backbone`, which adds
what the trainable and the metrics need: `features(x)`, `feature_dim`, `classifier`.

The registered backbones (feature_dim at width 1; channels scale with `width`, rounded to even):

| name | architecture | feature_dim | params (64 classes) |
|---|---|---|---|
| `resnet10` | timm ResNet, BasicBlock 1-1-1-1, 64-128-256-512 channels | 512 | 4.9M |
| `resnet18` | timm ResNet, BasicBlock 2-2-2-2, 64-128-256-512 channels | 512 | 11.2M |
| `resnet34` | timm ResNet, BasicBlock 3-4-6-3, 64-128-256-512 channels | 512 | 21.3M |
| `resnet12` | few-shot ResNet-12 (TADAM, MetaOptNet), 64-160-320-640 | 640 | 12.4M |
| `wrn28` | CIFAR WideResNet-28-k, k = 10 x width: WRN-28-10 (S2M2) | 640 | 36.5M |
| `test_resnet` | tiny timm ResNet for fast tests, BasicBlock 1-1-1-1, 8-64 | 64 | 0.08M |

`wrn28` at width 0.2 is WRN-28-2 (feature_dim 128, 1.5M), the CIFAR-scale member of the family.

`small_stem=True` (the config default) feeds full resolution into the first stage: a 3x3 stride-1
stem and no max-pool, the standard for 32x32 images. False keeps ImageNet's stride-4 stem
(7x7 stride-2 conv and max-pool for the ResNets), about 5x cheaper on CPU (docs/design-notes.md).
GPU options (channels_last, bf16, compile) are the trainable's business, not this module's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from analysis.errors import InputError
from trainables.augment import MEAN, STD
from trainables.fewshot_nets import ResNet12, WideResNet

__all__ = ["Backbone", "create_backbone", "list_backbones", "register_backbone", "scale_channels"]

F = TypeVar("F", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class _Entry:
    timm_name: str
    summary: str


_BACKBONES: dict[str, _Entry] = {}


def register_backbone(name: str) -> Callable[[F], F]:
    """Decorator: make a timm entrypoint (already under `@register_model`) a named backbone.

    The entrypoint must accept timm's usual kwargs plus `width` and `small_stem`.
    """

    def wrap(fn: F) -> F:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        _BACKBONES[name] = _Entry(fn.__name__, doc[0] if doc else "")
        return fn

    return wrap


def list_backbones() -> list[str]:
    """The names `create_backbone` accepts, sorted."""
    return sorted(_BACKBONES)


def describe_backbones() -> dict[str, str]:
    """Name -> one-line description, for listings (`nctune` help, error messages)."""
    return {name: _BACKBONES[name].summary for name in list_backbones()}


def _check_width(width: float) -> float:
    if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
        pass  # not a positive number (NaN fails `> 0`)
    elif math.isfinite(width):
        return float(width)
    raise InputError(
        f"backbone.width: {width!r} is not allowed; use a positive number (1.0 = published widths)"
    )


def scale_channels(channels: Iterable[int], width: float) -> tuple[int, ...]:
    """Channels times `width`, rounded half-up to an even number (at least 2).

    Even, because timm's ResNet feeds its first stage 2 x stem_width channels (see
    `_create_resnet`); 64 x a multiple of 1/32 stays exact, so widths 0.25 to 4 scale exactly.
    """
    width = _check_width(width)
    return tuple(max(2, 2 * int(c * width / 2 + 0.5)) for c in channels)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # No weights: these nets are trained from scratch by each trial. Mean/std are nctune's
    # normalisation (trainables.augment), so timm's data tooling would feed them the same inputs.
    cfg = dict(
        url="", num_classes=1000, input_size=(3, 32, 32), pool_size=None,
        mean=(MEAN,) * 3, std=(STD,) * 3, first_conv="conv1", classifier="fc",
    )  # fmt: skip
    return {**cfg, **kwargs}


# register_model reads the cfgs of its module at decoration time: they must come first.
default_cfgs = generate_default_cfgs(
    {
        "nctune_resnet10": _cfg(),
        "nctune_resnet18": _cfg(),
        "nctune_resnet34": _cfg(),
        "nctune_test_resnet": _cfg(),
        "nctune_resnet12": _cfg(first_conv="blocks.0.branch.0"),
        "nctune_wrn28_10": _cfg(),
        "nctune_wrn28_2": _cfg(),
    }
)


def _no_weights(variant: str, pretrained: bool) -> None:
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights: nctune trains it from scratch")


def _create_resnet(
    variant: str,
    layers: tuple[int, int, int, int],
    base: tuple[int, int, int, int] = (64, 128, 256, 512),
    *,
    pretrained: bool = False,
    width: float = 1.0,
    small_stem: bool = True,
    **kwargs: Any,
) -> ResNet:
    """timm's BasicBlock ResNet with every width scaled, the stem included.

    timm's plain stem is always 64 channels wide whatever `stem_width` says; only its deep stem
    uses `stem_width`, and feeds the first stage 2 x stem_width channels. So build with a deep
    stem of half the first stage's width, then swap the three-conv deep stem for the one wanted.
    """
    _no_weights(variant, pretrained)
    channels = scale_channels(base, width)
    model: Any = build_model_with_cfg(  # Any: timm's attributes are untyped
        ResNet, variant, pretrained, block=BasicBlock, layers=layers, channels=channels,
        stem_type="deep", stem_width=channels[0] // 2, **kwargs,
    )  # fmt: skip
    in_chans = model.in_chans
    if small_stem:
        stem = nn.Conv2d(in_chans, channels[0], 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        for info in model.feature_info:  # every stage now sees 4x the resolution
            info["reduction"] = max(1, info["reduction"] // 4)
    else:
        stem = nn.Conv2d(in_chans, channels[0], 7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")  # as timm's init
    model.conv1 = stem
    return model


@register_backbone("resnet10")
@register_model
def nctune_resnet10(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """timm ResNet-10: BasicBlock 1-1-1-1, 64-128-256-512 channels x width."""
    return _create_resnet("nctune_resnet10", (1, 1, 1, 1), pretrained=pretrained, **kwargs)


@register_backbone("resnet18")
@register_model
def nctune_resnet18(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """timm ResNet-18: BasicBlock 2-2-2-2, 64-128-256-512 channels x width."""
    return _create_resnet("nctune_resnet18", (2, 2, 2, 2), pretrained=pretrained, **kwargs)


@register_backbone("resnet34")
@register_model
def nctune_resnet34(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """timm ResNet-34: BasicBlock 3-4-6-3, 64-128-256-512 channels x width."""
    return _create_resnet("nctune_resnet34", (3, 4, 6, 3), pretrained=pretrained, **kwargs)


@register_backbone("test_resnet")
@register_model
def nctune_test_resnet(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Tiny timm ResNet for fast tests: BasicBlock 1-1-1-1, 8-16-32-64 channels x width."""
    return _create_resnet(
        "nctune_test_resnet", (1, 1, 1, 1), (8, 16, 32, 64), pretrained=pretrained, **kwargs
    )


@register_backbone("resnet12")
@register_model
def nctune_resnet12(pretrained: bool = False, *, width: float = 1.0, **kwargs: Any) -> ResNet12:
    """Few-shot ResNet-12 (TADAM, MetaOptNet): 4 blocks of 3 convs, 64-160-320-640 x width."""
    _no_weights("nctune_resnet12", pretrained)
    channels = cast(tuple[int, int, int, int], scale_channels((64, 160, 320, 640), width))
    return build_model_with_cfg(
        ResNet12, "nctune_resnet12", pretrained, channels=channels, **kwargs
    )


def _create_wrn(
    variant: str, k: float, pretrained: bool, width: float, **kwargs: Any
) -> WideResNet:
    _no_weights(variant, pretrained)
    # k widens the three groups only; the stem stays at the paper's 16 channels for every k.
    groups = scale_channels((16, 32, 64), k * _check_width(width))
    channels = cast(tuple[int, int, int, int], (16, *groups))
    return build_model_with_cfg(
        WideResNet, variant, pretrained, depth=28, channels=channels, **kwargs
    )


@register_backbone("wrn28")
@register_model
def nctune_wrn28_10(pretrained: bool = False, *, width: float = 1.0, **kwargs: Any) -> WideResNet:
    """CIFAR WideResNet-28-k, k = 10 x width (width 1: WRN-28-10 of S2M2), 16k-32k-64k channels."""
    return _create_wrn("nctune_wrn28_10", 10.0, pretrained, width, **kwargs)


@register_model
def nctune_wrn28_2(pretrained: bool = False, *, width: float = 1.0, **kwargs: Any) -> WideResNet:
    """CIFAR WideResNet-28-2 (k = 2 x width), for timm users; nctune's `wrn28` at width 0.2."""
    return _create_wrn("nctune_wrn28_2", 2.0, pretrained, width, **kwargs)


class Backbone(nn.Module):
    """A timm model plus the views the trainable and the metrics need.

    Attributes:
        model: the timm model (its state dict keys are prefixed `model.`).
        name: the registry name; width, small_stem: as built.
        feature_dim: size of `features(x)`, the input of `classifier`.
    """

    # Any: timm models share a protocol (forward_features, forward_head, get_classifier,
    # head_hidden_size), not a typed base class.
    model: Any

    def __init__(self, model: nn.Module, *, name: str, width: float, small_stem: bool) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.width = width
        self.small_stem = small_stem
        self.feature_dim = int(self.model.head_hidden_size)
        if not isinstance(self.model.get_classifier(), nn.Linear):
            raise TypeError(f"backbone {name!r}: classifier is not an nn.Linear (num_classes 0?)")

    @property
    def classifier(self) -> nn.Linear:
        """The final linear layer (its weight is the classifier NC3 compares with class means)."""
        return cast(nn.Linear, self.model.get_classifier())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes)."""
        return cast(torch.Tensor, self.model(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, feature_dim): timm's forward_head(pre_logits=True).

        In train mode these are after the classifier dropout; measure in eval mode.
        """
        pooled = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return cast(torch.Tensor, pooled)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both in one pass (the evaluation needs features for NC1-NC3 and logits for NC4)."""
        feats = self.features(x)
        return feats, self.classifier(feats)

    def extra_repr(self) -> str:
        """What print(model) shows: the backbone's name, width, stem and feature size."""
        return (
            f"name={self.name!r}, width={self.width}, small_stem={self.small_stem}, "
            f"feature_dim={self.feature_dim}"
        )


def _check_rate(value: float, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise InputError(f"{field}: {value!r} is not allowed; use a number in [0, 1)")
    return float(value)


def _check_count(value: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{field}: {value!r} is not allowed; use an integer >= 1")
    return value


def create_backbone(
    name: str,
    *,
    num_classes: int,
    in_chans: int,
    width: float = 1.0,
    small_stem: bool = True,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> Backbone:
    """Build a registered backbone through `timm.create_model`.

    Args:
        name: a name from `list_backbones()`.
        num_classes: classifier outputs (the source classes).
        in_chans: image channels (1 for glyphs and Omniglot, 3 for colour sets).
        width: channel multiplier (1.0 = the published widths; see the module docstring).
        small_stem: full-resolution stem for 32x32 inputs (True) or ImageNet's stride-4 one.
        drop_rate: dropout before the classifier (config key `dropout`).
        drop_path_rate: stochastic depth of the last block (config key `drop_path`).

    Raises:
        InputError: unknown name (the message lists the known ones) or a bad value, naming the
            config field.
    """
    if name not in _BACKBONES:
        raise InputError(
            f"backbone.name: {name!r} is not a known backbone; known: {', '.join(list_backbones())}"
        )
    width = _check_width(width)
    model = timm.create_model(
        _BACKBONES[name].timm_name,
        num_classes=_check_count(num_classes, "num_classes"),
        in_chans=_check_count(in_chans, "in_chans"),
        width=width,
        small_stem=bool(small_stem),
        drop_rate=_check_rate(drop_rate, "backbone.dropout"),
        drop_path_rate=_check_rate(drop_path_rate, "backbone.drop_path"),
    )
    return Backbone(model, name=name, width=width, small_stem=bool(small_stem))
