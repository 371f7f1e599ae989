"""Data roots whose folders are symbolic links load like the real trees.

Users link data sets into place (a class or alphabet folder on another disk); Python 3.11's
`Path.rglob` and a plain `os.walk` do not descend into linked folders, so before the shared walk
(`trainables.data.registry.walk_files`) such a root read as empty. Each loader that walks
folders gets a linked copy of its fixture (see conftest.py) and must return the same images,
labels and class names as from the real tree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.trainables.conftest import OMNIGLOT_LAYOUT
from trainables.config import DatasetConfig
from trainables.data import load_splits
from trainables.data.omniglot import Omniglot
from trainables.data.registry import walk_files


def assert_loads_the_same(linked: Path, real: Path, **opts: object) -> None:
    """The same class names, labels and image bytes in every split from either root."""
    a = load_splits(DatasetConfig(root=str(linked), **opts))
    b = load_splits(DatasetConfig(root=str(real), **opts))
    for name in ("source_train", "source_test", "target"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.class_names == y.class_names, name
        assert np.array_equal(x.labels.numpy(), y.labels.numpy()), name
        assert np.array_equal(x.images.numpy(), y.images.numpy()), name


# --- the walk itself --------------------------------------------------------------------------


def test_walk_follows_linked_folders_and_files_and_stops_at_cycles(tmp_path: Path) -> None:
    elsewhere = tmp_path / "disk2"
    (elsewhere / "deep").mkdir(parents=True)
    (elsewhere / "a.png").write_bytes(b"a")
    (elsewhere / "deep" / "b.png").write_bytes(b"b")
    (elsewhere / "deep" / "up").symlink_to(elsewhere)  # a cycle inside the linked folder
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "real" / "c.png").write_bytes(b"c")
    (root / "real" / "loop").symlink_to(root)  # a cycle back to the root
    (root / "linked").symlink_to(elsewhere)
    (root / "again").symlink_to(elsewhere)  # the same folder by a second link: not a cycle
    (root / "file.png").symlink_to(root / "real" / "c.png")
    (root / "broken.png").symlink_to(tmp_path / "missing.png")
    got = [p.relative_to(root).as_posix() for p in walk_files(root)]
    assert got == ["again/a.png", "again/deep/b.png", "file.png", "linked/a.png",
                   "linked/deep/b.png", "real/c.png"]


# --- omniglot: alphabet folders and a whole part as links ---------------------------------------


@pytest.fixture
def omniglot_linked(tmp_path: Path, omniglot_root: Path) -> Path:
    """images_background/<alphabet> are links; images_evaluation is one link to the part."""
    real = omniglot_root / "omniglot-py"
    root = tmp_path / "linked-omniglot"
    background = root / "images_background"
    background.mkdir(parents=True)
    for alphabet in {a for part, a, _, _ in OMNIGLOT_LAYOUT if part == "images_background"}:
        (background / alphabet).symlink_to(real / "images_background" / alphabet)
    (root / "images_evaluation").symlink_to(real / "images_evaluation")
    return root


OMNIGLOT_OPTS = {"name": "omniglot", "split_mode": "canonical", "num_source_classes": 5,
                 "num_target_classes": 5, "image_size": 20, "source_train_per_class": 4,
                 "source_test_per_class": 2, "target_per_class": 6}


def test_omniglot_with_linked_alphabets_loads_the_same(omniglot_linked: Path,
                                                       omniglot_root: Path) -> None:
    assert_loads_the_same(omniglot_linked, omniglot_root, **OMNIGLOT_OPTS)


def test_a_file_added_behind_a_link_changes_the_fingerprint(omniglot_linked: Path,
                                                            tmp_path: Path) -> None:
    """The split cache is keyed on the fingerprint: it must see files behind links too."""
    real_alphabet = tmp_path / "Extra"
    (real_alphabet / "character01").mkdir(parents=True)
    (omniglot_linked / "images_background" / "Extra").symlink_to(real_alphabet)
    cfg = DatasetConfig(root=str(omniglot_linked), **OMNIGLOT_OPTS)
    before = Omniglot(cfg).fingerprint()
    (real_alphabet / "character01" / "0001_01.png").write_bytes(b"not read here")
    assert Omniglot(cfg).fingerprint() != before


# --- folder: class folders as links, and links inside a class folder ----------------------------


@pytest.fixture
def folder_linked(tmp_path: Path, folder_root: Path) -> Path:
    """Odd classes are links to the class folder; even ones are real folders holding a link to
    the images; split.json is a linked file."""
    root = tmp_path / "linked-folder"
    root.mkdir()
    classes = sorted(p for p in folder_root.iterdir() if p.is_dir())
    for i, cls in enumerate(classes):
        if i % 2:
            (root / cls.name).symlink_to(cls)
        else:
            (root / cls.name).mkdir()
            (root / cls.name / "shard").symlink_to(cls)
    (root / "split.json").symlink_to(folder_root / "split.json")
    return root


@pytest.mark.parametrize("mode", ["random", "canonical"])
def test_folder_with_linked_classes_loads_the_same(mode: str, folder_linked: Path,
                                                   folder_root: Path) -> None:
    opts = {"name": "folder", "split_mode": mode, "num_source_classes": 4,
            "num_target_classes": 3, "image_size": 16, "source_train_per_class": 5,
            "source_test_per_class": 2, "target_per_class": 7}
    assert_loads_the_same(folder_linked, folder_root, **opts)


# --- mini-ImageNet and CIFAR: linked images folder, linked files ------------------------------


def test_miniimagenet_with_linked_images_and_csvs_loads_the_same(tmp_path: Path,
                                                                 miniimagenet_root: Path) -> None:
    root = tmp_path / "linked-mini"
    (root / "split").mkdir(parents=True)
    (root / "images").symlink_to(miniimagenet_root / "images")
    for part in ("train", "val", "test"):
        (root / "split" / f"{part}.csv").symlink_to(miniimagenet_root / f"{part}.csv")
    assert_loads_the_same(root, miniimagenet_root, name="mini-imagenet", split_mode="canonical",
                          num_source_classes=3, num_target_classes=2, image_size=16,
                          source_train_per_class=4, source_test_per_class=2,
                          target_per_class=6)


def test_cifar_with_a_linked_python_folder_loads_the_same(tmp_path: Path,
                                                          cifar_root: Path) -> None:
    root = tmp_path / "linked-cifar"
    root.mkdir()
    (root / "cifar-100-python").symlink_to(cifar_root / "cifar-100-python")
    assert_loads_the_same(root, cifar_root, name="cifar-fs", split_mode="canonical",
                          num_source_classes=4, num_target_classes=3, image_size=16,
                          source_train_per_class=3, source_test_per_class=3,
                          target_per_class=6)
