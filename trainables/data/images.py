"""Decoding and resizing images into the uint8 (N, C, S, S) layout every split uses."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 (N, C, H, W) to (N, C, size, size); antialiased bilinear, a no-op if equal."""
    if images.shape[-2:] == (size, size):
        return np.ascontiguousarray(images)
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 255).round().to(torch.uint8).numpy()


def decode_image(
    source: Path | bytes, channels: int, size: int, invert: bool = False
) -> np.ndarray:
    """Decode one image file (path or bytes) to uint8 (channels, size, size).

    PIL's resize filters antialias when shrinking; bicubic keeps edges of small images crisp.
    """
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as f:
        im = f.convert("L" if channels == 1 else "RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.uint8)
    arr = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(255 - arr if invert else arr)


def image_channels(path: Path) -> int:
    """1 for grayscale files (PIL modes 1, L, LA, I, I;16, F), else 3 (palette images too)."""
    with Image.open(path) as im:
        return 1 if im.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
