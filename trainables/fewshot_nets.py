"""The few-shot literature's two small-image backbones, with timm's model interface.

- `WideResNet`: the CIFAR WideResNet-d-k of Zagoruyko & Komodakis (2016), pre-activation basic
  blocks in three groups of 16k, 32k, 64k channels after a 16-channel 3x3 stem. WRN-28-10 is the
  backbone of S2M2 (Mangla et al., 2020) and of much of the few-shot work on CIFAR-FS and
  mini-ImageNet.
- `ResNet12`: the ResNet-12 of TADAM (Oreshkin et al., 2018) and MetaOptNet (Lee et al., 2019):
  four residual blocks of three 3x3 convs (64, 160, 320, 640 channels), each followed by a 2x2
  max-pool; no stem. DropBlock is left out: regularizers are the study's variables, and the
  registry's `drop_path_rate` (stochastic depth on each residual branch) covers the role.

Both take explicit channel tuples (the width multiplier is applied by `trainables.backbones`) and
expose what the rest of nctune and timm's tooling use: `forward_features`, `forward_head(x,
pre_logits=)`, `get_classifier`, `reset_classifier`, `num_features`, `head_hidden_size`,
`feature_info`. Dropout (`drop_rate`) sits before the classifier, as in timm's ResNet, so that
`dropout` means the same thing for every backbone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, create_classifier
from torch import nn


class _Head(nn.Module):
    """timm's head protocol shared by both nets: global pool -> dropout -> linear classifier."""

    num_classes: int
    num_features: int
    drop_rate: float

    def _init_head(self, num_features: int, num_classes: int, global_pool: str) -> None:
        self.num_classes = num_classes
        self.num_features = num_features
        self.global_pool, self.fc = create_classifier(
            num_features, num_classes, pool_type=global_pool
        )
        self.head_hidden_size = num_features * self.global_pool.feat_mult()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        pool = self.global_pool.pool_type if global_pool is None else global_pool
        self.global_pool, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=pool
        )
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(model: nn.Module) -> None:
    # He init for the ReLU nets (as WRN and timm do); zero bias for the classifier.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


def _drop_path(rate: float, index: int, total: int) -> nn.Module:
    # timm's stochastic-depth rule: the rate grows linearly from 0 at the first block.
    block_rate = rate * index / max(total - 1, 1)
    return DropPath(block_rate) if block_rate > 0 else nn.Identity()


class WideBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus the shortcut."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, drop_path: nn.Module) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.drop_path = drop_path
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation residual block: BN-ReLU-conv twice, plus the (projected) shortcut."""
        pre = F.relu(self.bn1(x))
        # As in the reference implementation, a projection shortcut sees the pre-activated input.
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return skip + self.drop_path(out)


class WideResNet(_Head):
    """CIFAR WideResNet-`depth`-k; `channels` = (stem, 16k, 32k, 64k), the paper's (16, ...).

    Args:
        depth: 6n + 4 (28 gives n = 4 blocks per group).
        channels: widths of the stem and the three groups.
        num_classes: classifier outputs (0: no classifier, timm's convention).
        in_chans: image channels.
        small_stem: True: the paper's 3x3 stride-1 stem (for 32x32 inputs). False: a stride-2
            stem and a stride-2 max-pool, which cuts the cost ~16x for larger images or slow CPUs.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth of the last block (linear from 0).
        global_pool: timm pool type.
    """

    def __init__(
        self,
        depth: int = 28,
        channels: tuple[int, int, int, int] = (16, 160, 320, 640),
        num_classes: int = 1000,
        in_chans: int = 3,
        small_stem: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        self.drop_rate = drop_rate
        stem, *widths = channels
        self.conv1 = nn.Conv2d(
            in_chans, stem, 3, stride=1 if small_stem else 2, padding=1, bias=False
        )
        self.pool: nn.Module = nn.Identity() if small_stem else nn.MaxPool2d(3, stride=2, padding=1)
        reduction = 1 if small_stem else 4
        self.feature_info = [dict(num_chs=stem, reduction=reduction, module="conv1")]
        groups: list[nn.Module] = []
        in_chs, index = stem, 0
        for g, out_chs in enumerate(widths):
            stride = 1 if g == 0 else 2
            reduction *= stride
            blocks = []
            for b in range(n):
                dp = _drop_path(drop_path_rate, index, 3 * n)
                blocks.append(WideBlock(in_chs, out_chs, stride if b == 0 else 1, dp))
                in_chs, index = out_chs, index + 1
            groups.append(nn.Sequential(*blocks))
            self.feature_info.append(
                dict(num_chs=out_chs, reduction=reduction, module=f"groups.{g}")
            )
        self.groups = nn.Sequential(*groups)
        # Pre-activation nets end un-normalised; the paper's final BN-ReLU precedes the pool.
        self.bn = nn.BatchNorm2d(in_chs)
        self._init_head(in_chs, num_classes, global_pool)
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled feature map of the last group, after the final BN-ReLU (timm's forward_features
        contract)."""
        x = self.pool(self.conv1(x))
        return F.relu(self.bn(self.groups(x)))


class Res12Block(nn.Module):
    """Three conv3x3-BN(-LeakyReLU) on the residual branch, 1x1 conv-BN shortcut, then pool."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, drop_path: nn.Module) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_chs),
            nn.LeakyReLU(0.1),
            nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_chs),
            nn.LeakyReLU(0.1),
            nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_chs),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
        )
        self.drop_path = drop_path
        self.act = nn.LeakyReLU(0.1)
        # ceil_mode: odd sizes (84 -> 42 -> 21 -> 11) keep their last row and column.
        self.pool = nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual branch plus shortcut, activation, then 2x2 max-pool, as in the few-shot
        ResNet-12."""
        return self.pool(self.act(self.shortcut(x) + self.drop_path(self.branch(x))))


class ResNet12(_Head):
    """The few-shot ResNet-12; `channels`: the four blocks' widths, published (64, 160, 320, 640).

    Args:
        channels: widths of the four blocks.
        num_classes: classifier outputs (0: no classifier).
        in_chans: image channels.
        small_stem: True: full resolution into the first block (the published net, which has no
            stem). False: the first conv has stride 2, a 4x cheaper first block for speed.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth of the last block (linear from 0).
        global_pool: timm pool type.
    """

    def __init__(
        self,
        channels: tuple[int, int, int, int] = (64, 160, 320, 640),
        num_classes: int = 1000,
        in_chans: int = 3,
        small_stem: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        self.drop_rate = drop_rate
        blocks = []
        self.feature_info = []
        in_chs, reduction = in_chans, 1
        for i, out_chs in enumerate(channels):
            stride = 2 if i == 0 and not small_stem else 1
            reduction *= 2 * stride
            dp = _drop_path(drop_path_rate, i, len(channels))
            blocks.append(Res12Block(in_chs, out_chs, stride, dp))
            self.feature_info.append(
                dict(num_chs=out_chs, reduction=reduction, module=f"blocks.{i}")
            )
            in_chs = out_chs
        self.blocks = nn.Sequential(*blocks)
        self._init_head(in_chs, num_classes, global_pool)
        _init_weights(self)
        for m in self.modules():  # LeakyReLU(0.1): He init with its slope
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.1, mode="fan_out", nonlinearity="leaky_relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled feature map after the four blocks (timm's forward_features contract)."""
        return self.blocks(x)
