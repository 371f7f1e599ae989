"""`glyphs`: the embedded default data set, rendered offline from matplotlib's fonts.

Classes come from `glyph_fonts` (several hundred letters and digits, homoglyphs merged). Images
are generated in blocks of `BLOCK` per class; block b is a pure function of (seed, b, image
size, strength, class list), so a set with 80 images per class starts with the same 40 as one
with 40, and every block is cached on disk on its own.

One image: a random (member character, face) of its class, rendered at a higher resolution R,
then, all batched in torch,

* stroke width: blend towards a dilation (up to `strength` × R/64 pixels) or an erosion
  (half as far);
* affine warp: rotation ±15°, log-scale ±0.15, shear ±0.2, translation ±5%, each × strength;
* elastic distortion: a smooth random displacement field (a 4×4 grid of Gaussian offsets,
  bicubic-upsampled), applied in the same `grid_sample` as the warp;
* area downsampling to `image_size`, then Gaussian pixel noise (σ = 0.04 × strength).

White ink on black, one channel.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any, ClassVar

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F

from analysis.errors import InputError
from trainables.data.cache import cached_arrays, source_hash
from trainables.data.glyph_fonts import (
    FACES,
    GlyphClass,
    glyph_classes,
    load_faces,
    render,
)
from trainables.data.registry import Catalog, Dataset, register_dataset

BLOCK = 40  # images per class per generated block: covers the default 15+5 source / 20 target
BASE_SEED = 0  # the glyph images are one fixed data set; split_seed only picks from it
CHUNK = 1024  # images augmented per batch (bounds memory at large image sizes)


def _code() -> str:
    """Identifies the generator's code (rendering and augmentation) in cache keys."""
    return source_hash("trainables.data.glyph_fonts", __name__)


def mask_resolution(image_size: int) -> int:
    """Render resolution: at least 2× the output, so warps and strokes are smooth after pooling."""
    return max(64, 2 * image_size)


@cache
def _masks(res: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Clean renders of every (member, face) of every class, uint8 (M, R, R).

    Returns the masks, each class's first row and each class's number of rows.
    """
    faces = load_faces()
    rows: list[np.ndarray] = []
    starts: list[int] = []
    sizes: list[int] = []
    for cls in glyph_classes():
        starts.append(len(rows))
        for ch, fi in cls.pairs():
            r = render(faces[fi], ch, res)
            if r is None:  # pragma: no cover - the class list only keeps drawn pairs
                raise RuntimeError(f"{ch!r} not drawn by {FACES[fi]}")
            rows.append(np.round(r * 255).astype(np.uint8))
        sizes.append(len(rows) - starts[-1])
    return torch.from_numpy(np.stack(rows)), np.array(starts), np.array(sizes)


def _max_filter(x: torch.Tensor, r: int) -> torch.Tensor:
    """Max over a (2r+1)² window, zero-padded: separable shifted maxima (max_pool2d is ~10×
    slower on CPU for this)."""
    h, w = x.shape[-2:]
    p = F.pad(x, (r, r, 0, 0))
    rows = p[..., :, 0:w]
    for k in range(1, 2 * r + 1):
        rows = torch.maximum(rows, p[..., :, k : k + w])
    p = F.pad(rows, (0, 0, r, r))
    out = p[..., 0:h, :]
    for k in range(1, 2 * r + 1):
        out = torch.maximum(out, p[..., k : k + h, :])
    return out


@cache
def _warp_basis(res: int) -> torch.Tensor:
    """(19, R*R): output x, y, 1 (affine_grid's coordinates) and 16 bicubic bumps of a 4×4
    control grid, so one matmul gives affine warp + elastic field for a whole batch."""
    lin = (torch.arange(res, dtype=torch.float32) * 2 + 1) / res - 1  # pixel centres
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    bumps = F.interpolate(torch.eye(16).view(16, 1, 4, 4), size=(res, res), mode="bicubic",
                          align_corners=True)
    return torch.cat([xx.reshape(1, -1), yy.reshape(1, -1), torch.ones(1, res * res),
                      bumps.view(16, -1)])


def _augment(x: torch.Tensor, strength: float, g: torch.Generator, out_size: int) -> torch.Tensor:
    """Stroke width, affine + elastic warp, downsampling and noise on (B, 1, R, R) floats."""
    b, _, res, _ = x.shape

    def u(*shape: int) -> torch.Tensor:  # uniform in [-1, 1)
        return torch.rand(shape, generator=g) * 2 - 1

    # Stroke width: blend towards a dilation (up to `strength` steps of R/64 pixels) or an
    # erosion (half as far: thin serif strokes would vanish).
    t = u(b) * strength
    t = torch.where(t < 0, t * 0.5, t)
    r = max(1, res // 64)
    grow, shrink = torch.nonzero(t > 0).ravel(), torch.nonzero(t < 0).ravel()
    if grow.numel():
        xs, tg = x[grow], t[grow].view(-1, 1, 1, 1)
        once = _max_filter(xs, r)
        xs = torch.lerp(xs, once, tg.clamp(max=1))
        if strength > 1:  # a second step for the strongest settings
            xs = torch.lerp(xs, _max_filter(once, r), (tg - 1).clamp(min=0))
        x[grow] = xs
    if shrink.numel():
        xs = x[shrink]
        x[shrink] = torch.lerp(xs, -_max_filter(-xs, r), -t[shrink].view(-1, 1, 1, 1))

    angle = u(b) * math.radians(15) * strength
    scale = torch.exp(u(b) * 0.15 * strength)
    shear = u(b) * 0.2 * strength
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    coeff = torch.empty(b, 2, 19)
    # output -> input coordinates: inverse scale, rotation, then x-shear; translation ±5%
    coeff[:, 0, 0], coeff[:, 0, 1] = cos + shear * sin, -sin + shear * cos
    coeff[:, 1, 0], coeff[:, 1, 1] = sin, cos
    coeff[:, :, 2] = u(b, 2) * 0.1 * strength
    coeff[:, :, 3:] = torch.randn((b, 2, 16), generator=g) * 0.03 * strength  # elastic
    grid = (coeff @ _warp_basis(res)).view(b, 2, res, res).permute(0, 2, 3, 1)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = F.adaptive_avg_pool2d(x, out_size)
    x = x + torch.randn(x.shape, generator=g) * (0.04 * strength)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def generate_block(
    *, seed: int, block: int, image_size: int, strength: float
) -> np.ndarray:
    """`BLOCK` augmented images of every class, uint8 (num_classes, BLOCK, 1, S, S)."""
    res = mask_resolution(image_size)
    masks, starts, sizes = _masks(res)
    num_classes = len(starts)
    rng = np.random.default_rng(np.random.SeedSequence([seed % 2**63, block, 7919]))
    g = torch.Generator().manual_seed(int(rng.integers(2**62)))
    cls = np.repeat(np.arange(num_classes), BLOCK)
    pick = starts[cls] + (rng.random(cls.size) * sizes[cls]).astype(np.int64)
    out = torch.empty((cls.size, 1, image_size, image_size), dtype=torch.uint8)
    for lo in range(0, cls.size, CHUNK):
        idx = torch.from_numpy(pick[lo : lo + CHUNK])
        x = masks[idx].unsqueeze(1).float() / 255
        out[lo : lo + CHUNK] = _augment(x, strength, g, image_size)
    return out.numpy().reshape(num_classes, BLOCK, 1, image_size, image_size)


def glyph_block(*, seed: int, block: int, image_size: int, strength: float) -> np.ndarray:
    """`generate_block`, cached on disk (memory-mapped; built once across processes)."""
    parts = {"code": _code(), "matplotlib": matplotlib.__version__,
             "torch": torch.__version__.split("+")[0], "numpy": np.__version__,
             "classes": [c.members for c in glyph_classes()], "seed": seed, "block": block,
             "image_size": image_size, "strength": float(strength), "block_size": BLOCK}

    def build() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        images = generate_block(seed=seed, block=block, image_size=image_size,
                                strength=strength)
        return {"images": images}, {}

    arrays, _ = cached_arrays("glyph-block", parts, build)
    return arrays["images"]


@register_dataset
class Glyphs(Dataset):
    """Letters and digits rendered from matplotlib's DejaVu and STIX faces."""

    name: ClassVar[str] = "glyphs"
    canonical: ClassVar[str | None] = "script"
    description: ClassVar[str] = "letters and digits rendered from matplotlib's fonts (default)"

    def blocks(self) -> int:
        """Blocks of rendered images per class the configured split sizes need."""
        c = self.cfg
        need = max(c.source_train_per_class + c.source_test_per_class, c.target_per_class)
        return math.ceil(need / BLOCK)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the generated set: generator version, image size, strength and blocks."""
        if self.cfg.root is not None:
            raise InputError(f"dataset.root: glyphs is generated and reads no files; got "
                             f"{self.cfg.root!r}; leave it unset (null)")
        if self.cfg.download:
            raise InputError("dataset.download: glyphs is generated, nothing to download; "
                             "set it to false")
        return {"code": _code(), "matplotlib": matplotlib.__version__,
                "torch": torch.__version__.split("+")[0], "numpy": np.__version__,
                "seed": BASE_SEED, "blocks": self.blocks(),
                "strength": float(self.cfg.data_strength)}

    def catalog(self) -> Catalog:
        """Render (or load from the cache) the glyph blocks and group their images by class."""
        classes = glyph_classes()
        blocks = [glyph_block(seed=BASE_SEED, block=b, image_size=self.cfg.image_size,
                              strength=self.cfg.data_strength) for b in range(self.blocks())]

        def read(c: int, idx: np.ndarray) -> np.ndarray:
            return np.stack([blocks[i // BLOCK][c, i % BLOCK] for i in idx])

        return Catalog(
            class_names=[c.name for c in classes],
            counts=np.full(len(classes), BLOCK * len(blocks)),
            channels=1,
            read=read,
            source_pool=np.flatnonzero([c.is_source_script for c in classes]),
            target_pool=np.flatnonzero([not c.is_source_script for c in classes]),
            order_block=BLOCK,
        )

    @classmethod
    def summary(cls) -> str:
        """Classes in total, by script, for `nctune datasets list`."""
        classes = glyph_classes()
        src = sum(c.is_source_script for c in classes)
        return f"{len(classes)} ({src} Latin/Greek/Cyrillic + {len(classes) - src} other)"


__all__ = ["BLOCK", "GlyphClass", "Glyphs", "generate_block", "glyph_block"]
