"""Source/target class splits and per-class image selection, the same for every data set.

Classes. `random` mode permutes all classes with the split seed and takes the first
`num_target_classes` as target and the next `num_source_classes` as source (the paper's
i.i.d.-classes assumption). `canonical` mode draws target classes from the data set's own target
pool and source classes from its source pool, each with its own seeded permutation. Either way
the target classes depend only on (data set, split mode, split seed, num_target_classes) and a
larger `num_source_classes` only adds classes, so every trial of a study that searches it is
measured on the same target images.

Images. Each class's images are shuffled with a generator seeded by (split seed, class); source
classes take the first `source_train_per_class` for source_train and the next
`source_test_per_class` for source_test, target classes the first `target_per_class`.

The result is cached as .npy files (see `cache`) and returned memory-mapped; the manifest carries
the counts, the seed, the class names and a SHA-256 of the arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from analysis.contract import SPLITS
from analysis.errors import InputError
from trainables.config import DatasetConfig
from trainables.data.cache import CACHE_FORMAT, cached_arrays, source_hash
from trainables.data.registry import Catalog, Dataset, create_dataset

# Options that change the split arrays; `root` and `download` act through the fingerprint.
_KEY_FIELDS = ("split_mode", "split_seed", "num_source_classes", "num_target_classes",
               "source_train_per_class", "source_test_per_class", "target_per_class",
               "image_size")  # fmt: skip


@dataclass(frozen=True)
class Split:
    """Images of one split: uint8 (N, C, H, W), int64 labels 0..len(class_names)-1."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        """Number of classes in this split."""
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> Split:
        """A copy with images and labels on `device` (class names shared)."""
        return Split(self.images.to(device), self.labels.to(device), self.class_names)


@dataclass(frozen=True)
class DataSplits:
    """source_train and source_test share a label space; target has its own."""

    source_train: Split
    source_test: Split
    target: Split
    manifest: dict[str, Any]

    def to(self, device: torch.device | str) -> DataSplits:
        """All three splits on `device` (e.g. the GPU, so training needs no loader)."""
        return DataSplits(self.source_train.to(device), self.source_test.to(device),
                          self.target.to(device), self.manifest)


def _rng(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed % 2**63, *salt]))


def choose_classes(cat: Catalog, cfg: DatasetConfig, canonical: str | None) -> tuple[
    np.ndarray, np.ndarray
]:
    """(source class ids, target class ids) in label order."""
    s, t, n = cfg.num_source_classes, cfg.num_target_classes, len(cat.class_names)
    if cfg.split_mode == "random":
        if t > n - 2:
            raise InputError(f"dataset.num_target_classes: {t} requested but {cfg.name} has {n} "
                             f"classes and at least 2 must stay source; allowed 2..{n - 2}")
        if s > n - t:
            raise InputError(f"dataset.num_source_classes: {s} requested but {cfg.name} has {n} "
                             f"classes, {t} of them target; allowed 2..{n - t}")
        perm = _rng(cfg.split_seed, 1).permutation(n)
        return perm[t : t + s], perm[:t]
    if cat.source_pool is None or cat.target_pool is None:
        raise InputError(f"dataset.split_mode: {cfg.name} has no canonical split; "
                         "allowed: 'random'")
    src_pool, tgt_pool = cat.source_pool, cat.target_pool
    if t > len(tgt_pool):
        raise InputError(f"dataset.num_target_classes: {t} requested but the canonical "
                         f"'{canonical}' split of {cfg.name} has {len(tgt_pool)} target "
                         f"classes; allowed 2..{len(tgt_pool)}")
    if s > len(src_pool):
        raise InputError(f"dataset.num_source_classes: {s} requested but the canonical "
                         f"'{canonical}' split of {cfg.name} has {len(src_pool)} source "
                         f"classes; allowed 2..{len(src_pool)}")
    target = _rng(cfg.split_seed, 2).permutation(tgt_pool)[:t]
    source = _rng(cfg.split_seed, 3).permutation(src_pool)[:s]
    return source, target


def image_order(seed: int, class_id: int, count: int, block: int) -> np.ndarray:
    """A seeded shuffle of range(count), within consecutive blocks of `block` (0: one block)."""
    rng = _rng(seed, 4, class_id)
    block = block or count
    return np.concatenate(
        [lo + rng.permutation(min(block, count - lo)) for lo in range(0, count, block)]
    )


def _check_counts(cat: Catalog, classes: np.ndarray, need: int, fields: str, name: str) -> None:
    short = [c for c in classes if cat.counts[c] < need]
    if short:
        c = min(short, key=lambda k: cat.counts[k])
        raise InputError(f"{fields}: {need} images per class requested but class "
                         f"{cat.class_names[c]!r} of {name} has only {cat.counts[c]}; "
                         f"allowed at most {cat.counts[c]} for this split")


def _take(cat: Catalog, classes: np.ndarray, picks: list[np.ndarray], size: int) -> tuple[
    np.ndarray, np.ndarray
]:
    images = [cat.read(int(c), idx) for c, idx in zip(classes, picks, strict=True)]
    for im in images:
        if im.dtype != np.uint8 or im.shape[1:] != (cat.channels, size, size):
            raise RuntimeError(f"reader returned {im.dtype} {im.shape}; expected uint8 "
                               f"(n, {cat.channels}, {size}, {size})")
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(p) for p in picks])
    return np.concatenate(images), labels


def build_splits(ds: Dataset, cfg: DatasetConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Make the split arrays and the manifest (uncached)."""
    cat = ds.catalog()
    source, target = choose_classes(cat, cfg, ds.canonical)
    tr, te, tg = cfg.source_train_per_class, cfg.source_test_per_class, cfg.target_per_class
    _check_counts(cat, source, tr + te,
                  "dataset.source_train_per_class + dataset.source_test_per_class", cfg.name)
    _check_counts(cat, target, tg, "dataset.target_per_class", cfg.name)
    orders = {int(c): image_order(cfg.split_seed, int(c), int(cat.counts[c]), cat.order_block)
              for c in np.concatenate([source, target])}
    picks = {
        "source_train": [orders[int(c)][:tr] for c in source],
        "source_test": [orders[int(c)][tr : tr + te] for c in source],
        "target": [orders[int(c)][:tg] for c in target],
    }
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        classes = target if split == "target" else source
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = _take(
            cat, classes, picks[split], cfg.image_size)
    names = {"source": [cat.class_names[c] for c in source],
             "target": [cat.class_names[c] for c in target]}
    per_class = {"source_train": tr, "source_test": te, "target": tg}
    manifest = {
        "dataset": cfg.name,
        "split_mode": cfg.split_mode,
        "canonical_split": ds.canonical if cfg.split_mode == "canonical" else None,
        "split_seed": cfg.split_seed,
        "image_size": cfg.image_size,
        "channels": cat.channels,
        "classes_available": len(cat.class_names),
        "counts": {s: {"classes": len(target if s == "target" else source),
                       "per_class": per_class[s], "images": int(arrays[f"{s}_labels"].size)}
                   for s in SPLITS},
        "source_classes": names["source"],
        "target_classes": names["target"],
        "fingerprint": ds.fingerprint(),
        "format": CACHE_FORMAT,
        **({"info": cat.info} if cat.info else {}),
    }
    return arrays, {"manifest": manifest}


def load_splits(cfg: DatasetConfig) -> DataSplits:
    """The three splits of the configured data set, from the on-disk cache when present.

    Raises:
        InputError: unknown data set, missing or malformed files, or a split asking for more
            classes or images than the data set has; the message names the config field.
    """
    ds = create_dataset(cfg)
    code = source_hash(__name__, "trainables.data.images", type(ds).__module__)
    parts = {"dataset": cfg.name, "fingerprint": ds.fingerprint(), "code": code,
             **{k: getattr(cfg, k) for k in _KEY_FIELDS}}
    arrays, extra = cached_arrays("splits", parts, lambda: build_splits(ds, cfg))
    manifest = {**extra["manifest"], "content_hash": extra["content_hash"],
                "cache_key": extra["key"]}
    names = {"source": manifest["source_classes"], "target": manifest["target_classes"]}

    def split(s: str) -> Split:
        return Split(images=torch.from_numpy(arrays[f"{s}_images"]),
                     labels=torch.from_numpy(arrays[f"{s}_labels"]),
                     class_names=list(names["target" if s == "target" else "source"]))

    return DataSplits(split("source_train"), split("source_test"), split("target"), manifest)
