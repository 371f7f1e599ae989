"""Batched augmentation on the training device: uint8 batch in, normalised float batch out.

The data sets live in memory as uint8 (B, C, H, W) tensors (on the GPU when there is one), so an
augmentation is a few tensor ops on the whole batch: integer index gathers for pad-and-crop and
flips (exact, no resampling), one `affine_grid`/`grid_sample` for random resized crops. No
per-sample Python and no PIL in the training loop. All randomness comes from the `torch.Generator`
passed in, so a seeded generator reproduces a batch exactly.

`strength` scales every magnitude (padding, crop scale range, aspect range) and 0 means identity,
so `aug_strength` is a searchable regularizer with a natural zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from analysis.errors import InputError

__all__ = ["MEAN", "MODES", "STD", "BatchAugment", "cutmix", "mixup", "normalize"]

# One scalar pair for every channel and every data set: pixels in [0, 1] map to [-2, 2].
# 0.5 centres any 8-bit image; 0.25 is close to the pixel std of natural-image sets (CIFAR's
# per-channel stds are 0.24-0.26). Per-data-set statistics would make features of different
# data sets (source vs target) depend on which set the constants came from; the BatchNorm after
# the stem absorbs what a fixed pair leaves.
MEAN = 0.5
STD = 0.25

Mode = Literal["pad_crop", "rrc", "none"]
Mixed = tuple[torch.Tensor, float]  # a mixed batch, the fraction of each image kept
MODES: tuple[str, ...] = ("pad_crop", "rrc", "none")

# pad_crop: the CIFAR standard, 4 px of padding at 32 px, at strength 1.
PAD_FRACTION = 1 / 8
# rrc: at strength 1 crops keep 35%-100% of the area with aspect ratio in [3/4, 4/3].
# torchvision's ImageNet default (8%-100%) cuts most of a 32x32 glyph away.
RRC_AREA_LOSS = 0.65
RRC_MIN_AREA = 0.05
RRC_LOG_RATIO = math.log(4 / 3)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 (x / 255 - MEAN) / STD, same shape and device.

    Used for training and evaluation alike, so features are measured on the inputs trained on.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {images.dtype}")
    return images.float().sub_(255 * MEAN).div_(255 * STD)


def _uniform(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    # Draw where the generator lives (a CPU generator can drive a GPU batch), then move: B floats.
    gen_device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=gen_device).to(device)


class BatchAugment:
    """Random crops and flips of a uint8 batch, returning the normalised float batch.

    Args:
        image_size: side of the output images.
        mode: "pad_crop": shift by up to image_size/8 x strength pixels, edges replicated (the
            border is background for glyphs and photos alike, where zero padding would draw a
            black frame on white-background glyphs); input must be image_size square.
            "rrc": random resized crop (area, aspect and position), bilinear, any input size.
            "none": no crop; input must be image_size square.
        flip: random horizontal flips. Off for glyphs and characters, whose mirror image is
            another symbol or none.
        strength: magnitude multiplier, >= 0; 0 returns `normalize(images)` (resized for rrc).
    """

    def __init__(
        self, image_size: int, *, mode: Mode = "pad_crop", flip: bool = False, strength: float = 1.0
    ) -> None:
        if mode not in MODES:
            raise InputError(f"augment mode: {mode!r} is not known; known: {', '.join(MODES)}")
        if not (isinstance(strength, int | float) and math.isfinite(strength) and strength >= 0):
            raise InputError(
                f"training.aug_strength: {strength!r} is not allowed; use a number >= 0"
            )
        if not (isinstance(image_size, int) and image_size >= 1):
            raise InputError(
                f"dataset.image_size: {image_size!r} is not allowed; use an integer >= 1"
            )
        self.image_size = image_size
        self.mode = mode
        self.flip = bool(flip)
        self.strength = float(strength)

    def __repr__(self) -> str:
        return (
            f"BatchAugment({self.image_size}, mode={self.mode!r}, flip={self.flip}, "
            f"strength={self.strength})"
        )

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Augment a (B, C, H, W) uint8 batch on its own device.

        Args:
            images: the batch.
            generator: the source of randomness, on the CPU or on the batch's device (None: the
                global generator of the batch's device).

        Returns:
            float32 (B, C, image_size, image_size), normalised.
        """
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(
                f"expected a uint8 (B, C, H, W) batch, got {images.dtype} {tuple(images.shape)}"
            )
        if self.mode == "rrc":
            return self._resized_crop(images, generator)
        size = self.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(
                f"mode {self.mode!r} needs {size}x{size} images, got {tuple(images.shape[-2:])}"
            )
        pad = round(self.strength * size * PAD_FRACTION) if self.mode == "pad_crop" else 0
        flip = self.flip and self.strength > 0
        if pad == 0 and not flip:
            return normalize(images)
        return normalize(self._shift_flip(images, pad, flip, generator))

    def _shift_flip(
        self, images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator | None
    ) -> torch.Tensor:
        # out[b, c, i, j] = in[b, c, clamp(i + dy_b), clamp(j + dx_b)]: a crop of the
        # edge-padded image, gathered from the uint8 batch without materialising the padding.
        b, c, h, w = images.shape
        dev = images.device
        u = _uniform(3 * b, generator, dev).view(3, b)
        dy = (u[0] * (2 * pad + 1)).long() - pad  # uniform on -pad..pad
        dx = (u[1] * (2 * pad + 1)).long() - pad
        ar = torch.arange(h, device=dev)
        rows = (ar + dy[:, None]).clamp_(0, h - 1)
        cols = (ar + dx[:, None]).clamp_(0, w - 1)
        if flip:
            cols = torch.where((u[2] < 0.5)[:, None], cols.flip(1), cols)
        # One gather over flattened pixels (half the index traffic of a row then a column gather).
        flat = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        return images.reshape(b, c, h * w).gather(2, flat).view(b, c, h, w)

    def _resized_crop(
        self, images: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        b, c, h, w = images.shape
        size, s = self.image_size, self.strength
        if s == 0 and (h, w) == (size, size):
            return normalize(images)
        u = _uniform(5 * b, generator, images.device).view(5, b)
        # Area and log-aspect uniform, as torchvision's RandomResizedCrop; crops that would leave
        # the image are clipped to it instead of resampled, so the whole batch is one operation.
        min_area = max(RRC_MIN_AREA, 1 - RRC_AREA_LOSS * s)
        area = 1 - u[0] * (1 - min_area)
        ratio = torch.exp((2 * u[1] - 1) * RRC_LOG_RATIO * s)
        cw = (area * ratio).sqrt().clamp(max=1)  # crop width, as a fraction of the image's
        ch = (area / ratio).sqrt().clamp(max=1)
        cx = (2 * u[2] - 1) * (1 - cw)  # crop centre in grid_sample's [-1, 1] coordinates
        cy = (2 * u[3] - 1) * (1 - ch)
        sign = torch.where((u[4] < 0.5) & self.flip & (s > 0), -1.0, 1.0).to(cw)
        theta = torch.zeros(b, 2, 3, device=images.device)
        theta[:, 0, 0] = cw * sign
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = ch
        theta[:, 1, 2] = cy
        grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
        return F.grid_sample(
            normalize(images), grid, mode="bilinear", padding_mode="border", align_corners=False
        )


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    # torch's Beta/Gamma samplers take no generator; seed numpy from the torch generator so the
    # draw stays reproducible from it. One scalar per batch: no cost worth a device kernel.
    gen_device = generator.device if generator is not None else "cpu"
    seed = int(torch.randint(2**62, (1,), generator=generator, device=gen_device).item())
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _mix(
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float,
    num_classes: int,
    generator: torch.Generator | None,
    combine: Callable[[torch.Tensor, torch.Tensor, float, torch.Generator | None], Mixed],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared by mixup and cutmix: draw lam and a partner per sample, mix targets by `kept`.

    `combine(x, perm, lam, generator)` returns the mixed batch and the fraction of each image
    that is still its own.
    """
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha >= 0):
        raise InputError(f"training.mixup_alpha: {alpha!r} is not allowed; use a number >= 0")
    if y.dtype != torch.int64 or y.dim() != 1:
        raise TypeError(f"labels must be int64 (B,), got {y.dtype} {tuple(y.shape)}")
    target = F.one_hot(y, num_classes).to(x.dtype)
    if alpha == 0:
        return x, target
    lam = _beta(alpha, generator)
    gen_device = generator.device if generator is not None else x.device
    perm = torch.randperm(x.shape[0], generator=generator, device=gen_device).to(x.device)
    mixed, kept = combine(x, perm, lam, generator)
    return mixed, target * kept + target[perm] * (1 - kept)


def _blend(x: torch.Tensor, perm: torch.Tensor, lam: float, _: torch.Generator | None) -> Mixed:
    return x * lam + x[perm] * (1 - lam), lam


def _paste_box(
    x: torch.Tensor, perm: torch.Tensor, lam: float, generator: torch.Generator | None
) -> Mixed:
    h, w = x.shape[-2:]
    cut = math.sqrt(1 - lam)
    gen_device = generator.device if generator is not None else "cpu"
    u = torch.rand(2, generator=generator, device=gen_device).tolist()
    cy, cx = u[0] * h, u[1] * w
    y0, y1 = int(max(cy - cut * h / 2, 0)), int(min(cy + cut * h / 2, h))
    x0, x1 = int(max(cx - cut * w / 2, 0)), int(min(cx + cut * w / 2, w))
    mixed = x.clone()
    mixed[..., y0:y1, x0:x1] = x[..., y0:y1, x0:x1][perm]
    return mixed, 1 - (y1 - y0) * (x1 - x0) / (h * w)


def mixup(
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float,
    num_classes: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al., 2018): lam x + (1 - lam) x[perm], lam ~ Beta(alpha, alpha) per batch.

    Args:
        x: float batch (B, ...), normalised.
        y: int64 labels (B,).
        alpha: Beta parameter; 0 disables mixing (x unchanged, one-hot targets).
        num_classes: width of the soft targets.
        generator: source of randomness.

    Returns:
        The mixed batch and soft targets (B, num_classes) in x's dtype, each row summing to 1.
    """
    return _mix(x, y, alpha, num_classes, generator, _blend)


def cutmix(
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float,
    num_classes: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al., 2019): paste one box of x[perm] into the whole batch.

    The box has area about (1 - lam) with lam ~ Beta(alpha, alpha) and a uniform centre, clipped
    to the image; the targets use the clipped box's actual area. One box per batch, as in the
    reference implementation, so it is one slice assignment.

    Args and returns as `mixup`; x is (B, C, H, W).
    """
    return _mix(x, y, alpha, num_classes, generator, _paste_box)
