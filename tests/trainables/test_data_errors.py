"""Bad input is one clear InputError naming the config field, the value and what is allowed."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

from analysis.errors import InputError
from trainables.config import DatasetConfig
from trainables.data import list_datasets, load_splits


def load(**kw: object) -> None:
    opts: dict[str, object] = {"num_source_classes": 3, "num_target_classes": 2,
                               "source_train_per_class": 2, "source_test_per_class": 1,
                               "target_per_class": 2, "image_size": 16}
    load_splits(DatasetConfig(**{**opts, **kw}))


def raises(match: str, **kw: object) -> str:
    with pytest.raises(InputError, match=match) as info:
        load(**kw)
    return str(info.value)


def test_unknown_dataset_lists_the_known_ones() -> None:
    msg = raises(r"^dataset\.name: unknown data set 'mnist'", name="mnist")
    for name in list_datasets():
        assert name in msg
    assert {"glyphs", "omniglot", "cifar-fs", "fc100", "mini-imagenet", "folder",
            "digits"} <= set(list_datasets())


@pytest.mark.parametrize("name", ["omniglot", "cifar-fs", "fc100", "mini-imagenet", "folder"])
def test_missing_path(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    msg = raises(r"^dataset\.root: .*nowhere does not exist", name=name, root=str(missing))
    assert "Expected" in msg  # says what layout it wants
    raises(r"^dataset\.root: .*needs a folder; got none", name=name)


def test_root_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    raises(r"^dataset\.root: .*file\.txt is not a folder", name="folder", root=str(f))


def test_omniglot_wrong_layout(tmp_path: Path) -> None:
    raises(r"^dataset\.root: .* holds no Omniglot files.*images_background",
           name="omniglot", root=str(tmp_path))
    flat = tmp_path / "images_background"
    flat.mkdir()
    (flat / "a.png").write_bytes(b"")
    raises(r"^dataset\.root: .*images_background is not in Omniglot's layout: expected "
           r"images_background/<alphabet>/<character>/\*\.png", name="omniglot",
           root=str(tmp_path))


def test_omniglot_canonical_needs_both_parts(omniglot_root: Path, tmp_path: Path) -> None:
    (tmp_path / "images_background").symlink_to(
        omniglot_root / "omniglot-py" / "images_background")
    raises(r"^dataset\.split_mode: 'canonical' needs both parts .* lacks images_evaluation",
           name="omniglot", root=str(tmp_path), split_mode="canonical")


def test_omniglot_bad_zip(tmp_path: Path) -> None:
    (tmp_path / "images_background.zip").write_bytes(b"not a zip")
    raises(r"^dataset\.root: .*images_background\.zip is not a readable zip", name="omniglot",
           root=str(tmp_path))


def test_cifar_wrong_files(tmp_path: Path) -> None:
    raises(r"^dataset\.root: .* lacks CIFAR-100's python files", name="cifar-fs",
           root=str(tmp_path))
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    for f in ("train", "test", "meta"):
        (base / f).write_bytes(pickle.dumps({"something": 1}))
    raises(r"^dataset\.root: .*meta is not a CIFAR-100 python-version file.*"
           r"fine_label_names", name="fc100", root=str(tmp_path))


def test_miniimagenet_wrong_layout(tmp_path: Path, miniimagenet_root: Path) -> None:
    raises(r"^dataset\.root: .* lacks the split CSVs", name="mini-imagenet", root=str(tmp_path))
    (tmp_path / "images").mkdir()
    for part in ("train", "val", "test"):
        (tmp_path / f"{part}.csv").write_text("file,class\nx.jpg,n1\n")
    raises(r"^dataset\.root: .*train\.csv is not a mini-ImageNet split file: expected the "
           r"header 'filename,label'", name="mini-imagenet", root=str(tmp_path))
    for part in ("train", "val", "test"):
        (tmp_path / f"{part}.csv").write_text(f"filename,label\n{part}.jpg,n{part}\n")
    raises(r"^dataset\.root: 3 images named in the split CSVs are missing", name="mini-imagenet",
           root=str(tmp_path))


def test_miniimagenet_download_is_not_offered(tmp_path: Path) -> None:
    raises(r"there is no downloader", name="mini-imagenet", root=str(tmp_path), download=True)


def test_folder_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "empty_class").mkdir()
    raises(r"^dataset\.root: .* is not an image-folder tree: it has 0 class folders",
           name="folder", root=str(tmp_path))


def test_folder_split_file_problems(folder_root: Path, tmp_path: Path) -> None:
    common = {"name": "folder", "root": str(folder_root), "split_mode": "canonical"}
    raises(r"^dataset\.split_file: .*nope\.json does not exist", split_file=str(tmp_path /
           "nope.json"), **common)
    bad = tmp_path / "bad.json"
    bad.write_text('["ant"]')
    raises(r"^dataset\.split_file: .*bad\.json is not JSON \{\"source\"", split_file=str(bad),
           **common)
    bad.write_text('{"source": ["ant", "yak"], "target": ["bee"]}')
    raises(r"^dataset\.split_file: .* names classes with no folder .*: yak", split_file=str(bad),
           **common)
    bad.write_text('{"source": ["ant", "bee"], "target": ["bee"]}')
    raises(r"^dataset\.split_file: .* lists classes as both source and target: bee",
           split_file=str(bad), **common)


def test_too_many_classes_random() -> None:
    msg = raises(r"^dataset\.num_target_classes: 9 requested but digits has 10 classes",
                 name="digits", num_target_classes=9)
    assert "allowed 2..8" in msg
    msg = raises(r"^dataset\.num_source_classes: 8 requested but digits has 10 classes, 4 of "
                 r"them target", name="digits", num_target_classes=4, num_source_classes=8)
    assert "allowed 2..6" in msg


def test_too_many_classes_canonical(cifar_root: Path) -> None:
    msg = raises(r"^dataset\.num_target_classes: 21 requested but the canonical "
                 r"'train/val/test' split of cifar-fs has 20 target classes",
                 name="cifar-fs", root=str(cifar_root), split_mode="canonical",
                 num_target_classes=21)
    assert "allowed 2..20" in msg
    raises(r"^dataset\.num_source_classes: 61 requested .* fc100 has 60 source classes",
           name="fc100", root=str(cifar_root), split_mode="canonical", num_source_classes=61)


def test_too_many_images(omniglot_root: Path) -> None:
    msg = raises(r"^dataset\.source_train_per_class \+ dataset\.source_test_per_class: 7 "
                 r"images per class requested but class '.*' of omniglot has only 6",
                 name="omniglot", root=str(omniglot_root), source_train_per_class=5,
                 source_test_per_class=2)
    assert "allowed at most 6" in msg
    raises(r"^dataset\.target_per_class: 300 images per class requested .* digits has only",
           name="digits", target_per_class=300)


def test_no_canonical_split_for_digits() -> None:
    raises(r"^dataset\.split_mode: digits has no canonical split; allowed: 'random'",
           name="digits", split_mode="canonical")


def test_generated_sets_take_no_root(tmp_path: Path) -> None:
    raises(r"^dataset\.root: glyphs is generated and reads no files", root=str(tmp_path))
    raises(r"^dataset\.download: glyphs is generated", download=True)
    raises(r"^dataset\.root: digits ships with scikit-learn", name="digits", root=str(tmp_path))


def test_messages_are_one_line() -> None:
    with pytest.raises(InputError) as info:
        load(name="mnist")
    assert not re.search(r"\n", str(info.value))
