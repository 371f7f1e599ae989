"""Backbones: every registered net trains at 32x32, widths scale everything, bad input is clear."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from analysis.errors import InputError
from trainables.backbones import (
    Backbone,
    create_backbone,
    describe_backbones,
    list_backbones,
    register_backbone,
)
from trainables.fewshot_nets import WideBlock

# feature_dim at width 1, from the published architectures.
BASE_DIM = {
    "resnet10": 512,
    "resnet12": 640,
    "resnet18": 512,
    "resnet34": 512,
    "test_resnet": 64,
    "wrn28": 640,
}


def _meta(name: str, **kwargs: object) -> Backbone:
    # Architecture only, no memory or init cost: wide nets build in milliseconds on "meta".
    with torch.device("meta"):
        return create_backbone(name, **{"num_classes": 10, "in_chans": 3, **kwargs})  # type: ignore[arg-type]


def test_registry_holds_the_contracted_backbones() -> None:
    assert set(list_backbones()) == set(BASE_DIM)
    assert list_backbones() == sorted(list_backbones())
    assert all(describe_backbones().values())


@pytest.mark.parametrize("name", sorted(BASE_DIM))
@pytest.mark.parametrize("small_stem", [True, False])
def test_forward_backward_at_32(name: str, small_stem: bool) -> None:
    torch.manual_seed(0)
    width = 1.0 if name == "test_resnet" else 0.25
    net = create_backbone(
        name, num_classes=7, in_chans=1, width=width, small_stem=small_stem,
        drop_rate=0.1, drop_path_rate=0.1,
    )  # fmt: skip
    net.train()
    x = torch.randn(4, 1, 32, 32)
    logits = net(x)
    assert logits.shape == (4, 7)
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 6]))
    loss.backward()
    assert math.isfinite(loss.item())
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), name
    assert net.classifier.weight.grad is not None and net.classifier.weight.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        feats = net.features(x)
    assert net.feature_dim == round(BASE_DIM[name] * width)
    assert feats.shape == (4, net.feature_dim)


@pytest.mark.parametrize("name", sorted(BASE_DIM))
@pytest.mark.parametrize("width", [0.25, 0.5, 1.0, 2.0, 4.0])
def test_width_scales_feature_dim(name: str, width: float) -> None:
    net = _meta(name, width=width)
    assert net.feature_dim == round(BASE_DIM[name] * width)
    assert net.classifier.in_features == net.feature_dim
    assert net.classifier.out_features == 10


def test_width_builds_for_real_at_4() -> None:
    net = create_backbone("test_resnet", num_classes=3, in_chans=3, width=4.0)
    with torch.no_grad():
        assert net.features(torch.randn(2, 3, 32, 32)).shape == (2, 256)


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("name", ["resnet10", "resnet18", "resnet34", "test_resnet"])
def test_resnet_stem_is_scaled(name: str, width: float) -> None:
    # timm's plain stem ignores stem_width and stays 64 wide: the width must reach it anyway.
    model = _meta(name, width=width).model
    first = round(BASE_DIM[name] // 8 * width)
    assert model.conv1.out_channels == first
    assert model.bn1.num_features == first
    assert model.layer1[0].conv1.in_channels == first
    assert model.layer1[0].downsample is None  # no projection patching a width mismatch


@pytest.mark.parametrize("name", ["resnet18", "test_resnet"])
def test_small_stem_keeps_full_resolution(name: str) -> None:
    x = torch.randn(2, 1, 32, 32)
    small = create_backbone(name, num_classes=5, in_chans=1, width=0.25, small_stem=True).model
    large = create_backbone(name, num_classes=5, in_chans=1, width=0.25, small_stem=False).model
    assert (small.conv1.kernel_size, small.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(small.maxpool, nn.Identity)
    assert (large.conv1.kernel_size, large.conv1.stride) == ((7, 7), (2, 2))
    assert isinstance(large.maxpool, nn.MaxPool2d)
    with torch.no_grad():
        assert small.forward_features(x).shape[-2:] == (4, 4)  # 32 / 8
        assert large.forward_features(x).shape[-2:] == (1, 1)  # 32 / 32
    assert [i["reduction"] for i in small.feature_info] == [1, 1, 2, 4, 8]


@pytest.mark.parametrize("name", ["wrn28", "resnet12"])
def test_fewshot_nets_small_stem(name: str) -> None:
    x = torch.randn(2, 3, 32, 32)
    small = create_backbone(name, num_classes=5, in_chans=3, width=0.1, small_stem=True).model
    large = create_backbone(name, num_classes=5, in_chans=3, width=0.1, small_stem=False).model
    with torch.no_grad():
        size_small = small.forward_features(x).shape[-1]
        size_large = large.forward_features(x).shape[-1]
    assert size_small == {"wrn28": 8, "resnet12": 2}[name]
    assert size_large < size_small


def test_published_parameter_counts() -> None:
    # WRN-28-10: 36.5M (Zagoruyko & Komodakis, Table 4); ResNet-12: 12.4M (MetaOptNet).
    def count(net: nn.Module) -> float:
        return sum(p.numel() for p in net.parameters()) / 1e6

    assert count(_meta("wrn28", num_classes=10)) == pytest.approx(36.5, abs=0.05)
    assert count(_meta("resnet12", num_classes=64)) == pytest.approx(12.4, abs=0.1)
    wrn = _meta("wrn28").model
    assert sum(isinstance(m, WideBlock) for m in wrn.modules()) == 12  # (28 - 4) / 6 per group
    assert wrn.conv1.out_channels == 16  # the paper's stem, whatever k


def test_features_are_the_classifier_input() -> None:
    torch.manual_seed(0)
    net = create_backbone("test_resnet", num_classes=4, in_chans=3).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        feats, logits = net.features_and_logits(x)
        torch.testing.assert_close(logits, net(x))
        torch.testing.assert_close(net.classifier(net.features(x)), net(x))
        pooled = net.model.forward_features(x).mean(dim=(2, 3))
    torch.testing.assert_close(feats, pooled)  # penultimate = global-average-pooled last stage
    assert (feats >= 0).all()  # after the last ReLU


def test_dropout_reaches_the_head() -> None:
    torch.manual_seed(0)
    net = create_backbone("test_resnet", num_classes=4, in_chans=1, drop_rate=0.5)
    x = torch.randn(8, 1, 32, 32)
    net.train()
    assert not torch.equal(net.features(x), net.features(x))
    net.eval()
    assert torch.equal(net.features(x), net.features(x))


def test_drop_path_reaches_the_blocks() -> None:
    for name in list_backbones():
        net = _meta(name, drop_path_rate=0.2)
        rates = [m.drop_prob for m in net.modules() if isinstance(m, timm.layers.DropPath)]
        assert rates and max(rates) == pytest.approx(0.2), name


def test_timm_finds_the_registered_models() -> None:
    assert {"nctune_resnet18", "nctune_wrn28_10", "nctune_wrn28_2", "nctune_resnet12"} <= set(
        timm.list_models("nctune_*")
    )
    with torch.device("meta"):
        model = timm.create_model("nctune_wrn28_10", width=0.2, num_classes=5)
        assert model.num_features == 128  # WRN-28-2
        assert timm.create_model("nctune_wrn28_2", num_classes=5).num_features == 128
        assert timm.create_model("nctune_resnet18", width=2.0, num_classes=5).num_features == 1024
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("nctune_resnet18", pretrained=True)


def test_unknown_backbone_lists_the_known_ones() -> None:
    with pytest.raises(InputError) as err:
        create_backbone("resnet1000", num_classes=5, in_chans=3)
    message = str(err.value)
    assert "backbone.name" in message and "'resnet1000'" in message
    for name in list_backbones():
        assert name in message


@pytest.mark.parametrize("width", [0, -1.0, float("nan"), float("inf"), "2", True])
def test_bad_width_names_the_field(width: object) -> None:
    with pytest.raises(InputError, match=r"backbone\.width"):
        create_backbone("test_resnet", num_classes=5, in_chans=3, width=width)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"drop_rate": 1.0}, "backbone.dropout"),
        ({"drop_rate": -0.1}, "backbone.dropout"),
        ({"drop_path_rate": 1.5}, "backbone.drop_path"),
        ({"num_classes": 0}, "num_classes"),
        ({"in_chans": 0}, "in_chans"),
    ],
)
def test_bad_values_name_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"num_classes": 5, "in_chans": 3, **kwargs}
    with pytest.raises(InputError, match=field):
        create_backbone("test_resnet", **args)  # type: ignore[arg-type]


def test_registering_a_name_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="twice"):
        register_backbone("resnet18")(lambda **_: nn.Identity())
