"""Every real loader reads a tiny fixture in its real on-disk format (see conftest.py), and every
loaded image is the file its label says."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from tests.trainables.conftest import (
    CIFAR_TEST_PER_CLASS,
    CIFAR_TRAIN_PER_CLASS,
    FOLDER_PER_CLASS,
    MINI_PARTS,
    MINI_PER_CLASS,
    OMNIGLOT_LAYOUT,
    cifar_names,
)
from trainables.config import DatasetConfig
from trainables.data import Split, load_splits
from trainables.data.cifar import (
    CIFAR_FS_TEST,
    CIFAR_FS_TRAIN,
    CIFAR_FS_VAL,
    FC100_TEST,
    FC100_TRAIN,
    FC100_VAL,
)
from trainables.data.images import decode_image, resize_uint8


def cfg(**kw: object) -> DatasetConfig:
    return DatasetConfig(**kw)


def assert_images_from(split: Split, files_of: dict[str, list[np.ndarray]]) -> None:
    """Each image equals one of the decoded files of the class its label names, no file twice."""
    used = set()
    for im, label in zip(split.images.numpy(), split.labels.numpy(), strict=True):
        name = split.class_names[label]
        hits = [i for i, f in enumerate(files_of[name]) if np.array_equal(f, im)]
        assert hits, f"image labelled {name!r} matches none of its files"
        assert (name, hits[0]) not in used
        used.add((name, hits[0]))


# --- omniglot ---------------------------------------------------------------------------------


def omniglot_files(base: Path, size: int) -> dict[str, list[np.ndarray]]:
    return {f"{a}/{c.name}": [decode_image(p, 1, size, invert=True) for p in sorted(c.glob("*"))]
            for part in ("images_background", "images_evaluation")
            for a in {x[1] for x in OMNIGLOT_LAYOUT if x[0] == part}
            for c in sorted((base / part / a).iterdir())}


@pytest.mark.parametrize("layout", ["torchvision", "zip"])
def test_omniglot_canonical_split(layout: str, omniglot_root: Path,
                                  omniglot_zip_root: Path) -> None:
    root = omniglot_root if layout == "torchvision" else omniglot_zip_root
    d = load_splits(cfg(name="omniglot", root=str(root), split_mode="canonical",
                        num_source_classes=5, num_target_classes=5, image_size=28,
                        source_train_per_class=4, source_test_per_class=2, target_per_class=6))
    assert {n.split("/")[0] for n in d.source_train.class_names} == {"Latin", "Greek"}
    assert {n.split("/")[0] for n in d.target.class_names} == {"Atlantean", "Kannada"}
    files = omniglot_files(omniglot_root / "omniglot-py", 28)
    for split in (d.source_train, d.source_test, d.target):
        assert_images_from(split, files)
    assert d.source_train.images.numpy().mean() < 128  # inverted: white strokes on black


def test_omniglot_zip_and_folder_give_the_same_bytes(omniglot_root: Path,
                                                     omniglot_zip_root: Path) -> None:
    opts = {"name": "omniglot", "num_source_classes": 6, "num_target_classes": 4,
            "source_train_per_class": 3, "source_test_per_class": 3, "target_per_class": 6}
    a = load_splits(cfg(root=str(omniglot_root), **opts))
    b = load_splits(cfg(root=str(omniglot_zip_root), **opts))
    assert np.array_equal(a.target.images.numpy(), b.target.images.numpy())
    assert a.target.class_names == b.target.class_names


def test_omniglot_folders_directly_under_root(omniglot_root: Path) -> None:
    d = load_splits(cfg(name="omniglot", root=str(omniglot_root / "omniglot-py"),
                        num_source_classes=3, num_target_classes=3, source_train_per_class=3,
                        source_test_per_class=1, target_per_class=4))
    assert d.manifest["classes_available"] == sum(x[2] for x in OMNIGLOT_LAYOUT)


# --- CIFAR-FS and FC100 ---------------------------------------------------------------------


def test_split_lists_match_the_cifar100_hierarchy() -> None:
    fine, _, fine_to_coarse = cifar_names()
    fs = [CIFAR_FS_TRAIN, CIFAR_FS_VAL, CIFAR_FS_TEST]
    assert [len(p) for p in fs] == [64, 16, 20]
    assert sorted(c for p in fs for c in p) == fine  # disjoint and complete
    fc = [FC100_TRAIN, FC100_VAL, FC100_TEST]
    assert [len(p) for p in fc] == [12, 4, 4]
    assert sorted(c for p in fc for c in p) == sorted(set(fine_to_coarse.values()))


def cifar_files(root: Path) -> dict[str, list[np.ndarray]]:
    fine, _, _ = cifar_names()
    out: dict[str, list[np.ndarray]] = {n: [] for n in fine}
    for part in ("train", "test"):
        with (root / "cifar-100-python" / part).open("rb") as fh:
            obj = pickle.load(fh)
        for row, label in zip(obj["data"], obj["fine_labels"], strict=True):
            out[fine[label]].append(row.reshape(3, 32, 32))
    return out


@pytest.mark.parametrize(("name", "part", "parts"), [
    ("cifar-fs", "test", (CIFAR_FS_TRAIN, CIFAR_FS_TEST)),
    ("cifar-fs", "val+test", (CIFAR_FS_TRAIN, CIFAR_FS_VAL + CIFAR_FS_TEST)),
    ("fc100", "val", (FC100_TRAIN, FC100_VAL)),
])
def test_cifar_canonical_splits(name: str, part: str, parts: tuple[list[str], list[str]],
                                cifar_root: Path) -> None:
    per = CIFAR_TRAIN_PER_CLASS + CIFAR_TEST_PER_CLASS
    d = load_splits(cfg(name=name, root=str(cifar_root), split_mode="canonical",
                        target_part=part, num_source_classes=10, num_target_classes=8,
                        source_train_per_class=per - 2, source_test_per_class=2,
                        target_per_class=per))
    if name == "fc100":
        _, _, f2c = cifar_names()
        src, tgt = ({f for f, c in f2c.items() if c in p} for p in parts)
    else:
        src, tgt = set(parts[0]), set(parts[1])
    assert set(d.source_train.class_names) <= src and set(d.target.class_names) <= tgt
    assert d.source_train.images.shape[1:] == (3, 32, 32)
    files = cifar_files(cifar_root)
    for split in (d.source_train, d.source_test, d.target):
        assert_images_from(split, files)


def test_cifar_resized_and_root_may_be_the_python_folder(cifar_root: Path) -> None:
    d = load_splits(cfg(name="cifar-fs", root=str(cifar_root / "cifar-100-python"),
                        num_source_classes=4, num_target_classes=3, image_size=24,
                        source_train_per_class=3, source_test_per_class=3, target_per_class=6))
    assert d.target.images.shape == (18, 3, 24, 24)
    files = {k: [resize_uint8(v[None], 24)[0] for v in vs]
             for k, vs in cifar_files(cifar_root).items()}
    assert_images_from(d.target, files)


# --- mini-ImageNet ----------------------------------------------------------------------------


def test_miniimagenet_canonical_split(miniimagenet_root: Path) -> None:
    d = load_splits(cfg(name="mini-imagenet", root=str(miniimagenet_root),
                        split_mode="canonical", num_source_classes=3, num_target_classes=2,
                        image_size=20, source_train_per_class=4, source_test_per_class=2,
                        target_per_class=MINI_PER_CLASS))
    assert set(d.source_train.class_names) == set(MINI_PARTS["train"])
    assert set(d.target.class_names) == set(MINI_PARTS["test"])
    files = {w: [decode_image(p, 3, 20) for p in sorted((miniimagenet_root / "images").glob(
        f"{w}*.jpg"))] for ws in MINI_PARTS.values() for w in ws}
    for split in (d.source_train, d.source_test, d.target):
        assert_images_from(split, files)


# --- folder and digits ------------------------------------------------------------------------


def test_folder_random_split_reads_every_class(folder_root: Path) -> None:
    d = load_splits(cfg(name="folder", root=str(folder_root), num_source_classes=4,
                        num_target_classes=3, image_size=16, source_train_per_class=5,
                        source_test_per_class=2, target_per_class=FOLDER_PER_CLASS))
    assert d.manifest["classes_available"] == 7 and d.target.images.shape[1] == 3
    files = {c.name: [decode_image(p, 3, 16) for p in sorted(c.glob("*.png"))]
             for c in folder_root.iterdir() if c.is_dir()}
    for split in (d.source_train, d.source_test, d.target):
        assert_images_from(split, files)


def test_folder_split_file_elsewhere(folder_root: Path, tmp_path: Path) -> None:
    split_file = tmp_path / "mysplit.json"
    split_file.write_text('{"source": ["ant", "bee"], "target": ["gnu", "fox"]}')
    d = load_splits(cfg(name="folder", root=str(folder_root), split_mode="canonical",
                        split_file=str(split_file), num_source_classes=2, num_target_classes=2,
                        source_train_per_class=3, source_test_per_class=1, target_per_class=3))
    assert set(d.source_train.class_names) == {"ant", "bee"}
    assert set(d.target.class_names) == {"gnu", "fox"}


def test_digits_are_real_handwriting() -> None:
    d = load_splits(cfg(name="digits", num_source_classes=6, num_target_classes=4,
                        source_train_per_class=30, source_test_per_class=10,
                        target_per_class=20, image_size=8))
    assert sorted(d.source_train.class_names + d.target.class_names) == list("0123456789")
    from sklearn.datasets import load_digits

    raw = load_digits()
    files = {str(k): [np.round(im * 255 / 16).astype(np.uint8)[None]
                      for im in raw.images[raw.target == k]] for k in range(10)}
    assert_images_from(d.target, files)
