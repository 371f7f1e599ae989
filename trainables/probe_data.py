"""The target of a probe: one data set's classes as a single labelled split, and its adaptation.

A probe measures a backbone on classes of another domain (`nctune probe demo --target digits`).
Unlike a study's splits, nothing is pretrained here, so no class has to stay a source class:
by default every class of the data set (of its canonical target pool with
`dataset.split_mode=canonical`) is a target class. Images per class are chosen by the same
seeded order as a study's splits (`trainables.data.splits.image_order`).

The backbone decides the input: `adapt_images` turns grayscale into RGB (the channel repeated)
or RGB into grayscale (ITU-R BT.601 luma), and resizes (bilinear, antialiased) to the size it
was trained on, and says what it did in words the CLI prints.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from analysis.errors import InputError
from trainables.config import DatasetConfig
from trainables.data import Split, create_dataset
from trainables.data.splits import _check_counts, _rng, _take, image_order

# ITU-R BT.601 luma weights: what PIL's convert("L") uses.
LUMA = (0.299, 0.587, 0.114)


def load_target(cfg: DatasetConfig, *, all_classes: bool) -> tuple[Split, dict[str, Any]]:
    """The probe's target split and its manifest (classes, counts, size, content hash).

    Args:
        cfg: the data set; `num_target_classes`, `target_per_class`, `image_size`,
            `split_seed` and `split_mode` apply, the source fields do not.
        all_classes: take every class of the pool (the user did not set num_target_classes).

    Raises:
        InputError: unknown data set, missing files, more classes or images than it has.
    """
    ds = create_dataset(cfg)
    fingerprint = ds.fingerprint()
    cat = ds.catalog()
    pool = np.arange(len(cat.class_names))
    if cfg.split_mode == "canonical":
        if cat.target_pool is None:
            raise InputError(f"dataset.split_mode: {cfg.name} has no canonical split; "
                             "allowed: 'random'")
        pool = np.asarray(cat.target_pool)
    n = len(pool) if all_classes else cfg.num_target_classes
    if n > len(pool):
        raise InputError(f"dataset.num_target_classes: {n} requested but {cfg.name} has "
                         f"{len(pool)} classes to probe on; allowed 2..{len(pool)}")
    classes = np.sort(pool if all_classes else _rng(cfg.split_seed, 2).permutation(pool)[:n])
    _check_counts(cat, classes, cfg.target_per_class, "dataset.target_per_class", cfg.name)
    picks = [image_order(cfg.split_seed, int(c), int(cat.counts[c]),
                         cat.order_block)[:cfg.target_per_class] for c in classes]
    images, labels = _take(cat, classes, picks, cfg.image_size)
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()[:12]
    names = [cat.class_names[c] for c in classes]
    manifest = {"dataset": cfg.name, "classes": len(classes), "per_class": cfg.target_per_class,
                "image_size": cfg.image_size, "channels": cat.channels,
                "split_mode": cfg.split_mode, "split_seed": cfg.split_seed,
                "class_names": names, "fingerprint": fingerprint, "content_hash": digest}
    return Split(torch.from_numpy(images), torch.from_numpy(labels), names), manifest


def adapt_images(images: torch.Tensor, channels: int, size: int) -> tuple[torch.Tensor, str]:
    """uint8 (N, C, S, S) images as a backbone trained on `channels` x `size` x `size` sees them.

    Returns the adapted uint8 images and what was done ("as trained on" when nothing).

    Raises:
        InputError: a channel count that is neither 1 nor 3 on one side.
    """
    have, side = int(images.shape[1]), int(images.shape[-1])
    done = []
    if have != channels:
        if (have, channels) == (1, 3):
            images = images.expand(-1, 3, -1, -1).contiguous()
            done.append("grayscale -> RGB (channel repeated)")
        elif (have, channels) == (3, 1):
            luma = torch.tensor(LUMA, dtype=torch.float32, device=images.device)
            gray = (images.float() * luma[None, :, None, None]).sum(1, keepdim=True)
            images = gray.round().clamp(0, 255).to(torch.uint8)
            done.append("RGB -> grayscale (BT.601 luma)")
        else:
            raise InputError(f"target images have {have} channels and the backbone takes "
                             f"{channels}; a probe converts only between 1 and 3")
    if side != size:
        resized = F.interpolate(images.float(), size=(size, size), mode="bilinear",
                                antialias=True, align_corners=False)
        images = resized.round().clamp(0, 255).to(torch.uint8)
        done.append(f"{side}x{side} -> {size}x{size} (bilinear)")
    return images, "; ".join(done) or "as trained on"
