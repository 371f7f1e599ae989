"""Data sets for pretraining (source classes) and few-shot transfer (target classes).

    from trainables.data import load_splits
    splits = load_splits(DatasetConfig(name="glyphs", num_source_classes=64))
    splits.source_train.images  # uint8 (N, C, H, W), memory-mapped from the on-disk cache

Registered data sets (`list_datasets()`): glyphs (embedded default), digits (scikit-learn),
omniglot, cifar-fs, fc100, mini-imagenet, folder. Each family is one module that registers
itself with `@register_dataset`; importing this package imports them all.
"""

from __future__ import annotations

# Importing the family modules registers them.
from trainables.data import cifar, digits, folder, glyphs, miniimagenet, omniglot
from trainables.data.registry import (
    Catalog,
    Dataset,
    create_dataset,
    get_dataset_class,
    list_datasets,
    register_dataset,
)
from trainables.data.splits import DataSplits, Split, load_splits

__all__ = [
    "Catalog",
    "DataSplits",
    "Dataset",
    "Split",
    "cifar",
    "create_dataset",
    "digits",
    "folder",
    "get_dataset_class",
    "glyphs",
    "list_datasets",
    "load_splits",
    "miniimagenet",
    "omniglot",
    "register_dataset",
]
