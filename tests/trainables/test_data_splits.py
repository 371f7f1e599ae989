"""The split contract, checked on real data: disjoint, deterministic, counts as requested, the
target independent of num_source_classes, cached memory-mapped and verified by hash."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainables.config import DatasetConfig
from trainables.data import DataSplits, load_splits
from trainables.data.cache import cache_root, cached_arrays
from trainables.data.splits import image_order


def small(**kw: object) -> DatasetConfig:
    opts: dict[str, object] = {"name": "digits", "num_source_classes": 5,
                               "num_target_classes": 4, "source_train_per_class": 12,
                               "source_test_per_class": 6, "target_per_class": 10,
                               "image_size": 16}
    return DatasetConfig(**{**opts, **kw})


def rows(images: np.ndarray) -> set[bytes]:
    return {im.tobytes() for im in images}


def check_contract(d: DataSplits, cfg: DatasetConfig) -> None:
    """Shapes, dtypes, label ranges, per-class counts and disjointness."""
    per = {"source_train": (cfg.num_source_classes, cfg.source_train_per_class),
           "source_test": (cfg.num_source_classes, cfg.source_test_per_class),
           "target": (cfg.num_target_classes, cfg.target_per_class)}
    for name, (classes, each) in per.items():
        split = getattr(d, name)
        assert split.images.dtype.is_floating_point is False and str(split.images.dtype) == \
            "torch.uint8"
        assert str(split.labels.dtype) == "torch.int64"
        n, _, h, w = split.images.shape
        assert (n, h, w) == (classes * each, cfg.image_size, cfg.image_size)
        assert split.num_classes == classes == len(set(split.class_names))
        assert np.bincount(split.labels.numpy(), minlength=classes).tolist() == [each] * classes
        assert d.manifest["counts"][name] == {"classes": classes, "per_class": each,
                                              "images": n}
    assert d.source_train.class_names == d.source_test.class_names
    assert not set(d.source_train.class_names) & set(d.target.class_names)
    assert not rows(d.source_train.images.numpy()) & rows(d.source_test.images.numpy())


def test_glyph_default_split_meets_the_contract(glyph_splits: DataSplits) -> None:
    check_contract(glyph_splits, DatasetConfig())
    assert glyph_splits.source_train.images.shape[1] == 1
    m = glyph_splits.manifest
    json.dumps(m)  # trials log it
    assert m["dataset"] == "glyphs" and m["split_seed"] == 0 and len(m["content_hash"]) == 64


def test_digits_meet_the_contract() -> None:
    cfg = small()
    check_contract(load_splits(cfg), cfg)


def test_folder_images_are_never_in_two_splits(folder_root: Path) -> None:
    """Every fixture image is distinct noise: a shared byte pattern would mean a shared file."""
    cfg = small(name="folder", root=str(folder_root), num_source_classes=4,
                num_target_classes=3, source_train_per_class=4, source_test_per_class=3,
                target_per_class=7)
    d = load_splits(cfg)
    check_contract(d, cfg)
    seen = [rows(getattr(d, s).images.numpy()) for s in ("source_train", "source_test", "target")]
    assert sum(len(s) for s in seen) == len(set().union(*seen)) == 4 * 7 + 3 * 7


def test_same_seed_same_bytes_in_a_fresh_cache(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = small()
    a = load_splits(cfg)
    monkeypatch.setenv("NCTUNE_CACHE", str(tmp_path))
    b = load_splits(cfg)  # rebuilt from scratch
    assert (tmp_path / "splits").is_dir()
    assert a.manifest["content_hash"] == b.manifest["content_hash"]
    for s in ("source_train", "source_test", "target"):
        assert np.array_equal(getattr(a, s).images.numpy(), getattr(b, s).images.numpy())
        assert getattr(a, s).class_names == getattr(b, s).class_names


def test_another_seed_gives_another_split() -> None:
    a, b = load_splits(small(split_seed=0)), load_splits(small(split_seed=1))
    assert a.manifest["content_hash"] != b.manifest["content_hash"]
    assert (a.target.class_names != b.target.class_names
            or not np.array_equal(a.target.images.numpy(), b.target.images.numpy()))


def test_target_does_not_depend_on_num_source_classes(glyph_splits: DataSplits) -> None:
    """Trials searching num_source_classes are all measured on the same target images."""
    few = load_splits(DatasetConfig(num_source_classes=10))
    assert few.target.class_names == glyph_splits.target.class_names
    assert np.array_equal(few.target.images.numpy(), glyph_splits.target.images.numpy())
    # more source classes only add classes
    assert few.source_train.class_names == glyph_splits.source_train.class_names[:10]


def test_target_images_survive_a_larger_source_request() -> None:
    """More source images per class (a second generated block) keeps the first 40 in place."""
    base = small(name="glyphs", num_source_classes=3, num_target_classes=3, image_size=16,
                 source_train_per_class=5, source_test_per_class=5, target_per_class=8)
    more = base.model_copy(update={"source_train_per_class": 45})
    a, b = load_splits(base), load_splits(more)
    assert a.target.class_names == b.target.class_names
    assert np.array_equal(a.target.images.numpy(), b.target.images.numpy())
    assert b.manifest["counts"]["source_train"]["images"] == 3 * 45


def test_image_order_shuffles_within_blocks() -> None:
    order = image_order(5, 3, 100, 40)
    assert sorted(order.tolist()) == list(range(100))
    assert sorted(order[:40].tolist()) == list(range(40))
    assert np.array_equal(order[:40], image_order(5, 3, 40, 40))
    assert not np.array_equal(order, image_order(6, 3, 100, 40))


def test_arrays_come_back_memory_mapped_from_the_cache(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NCTUNE_CACHE", str(tmp_path))
    arrays, _ = cached_arrays("test-mmap", {"x": 1}, lambda: ({"a": np.arange(10)}, {}))
    assert isinstance(arrays["a"], np.memmap)
    assert str(arrays["a"].filename).startswith(str(tmp_path))
    assert cache_root() == tmp_path


def test_corrupt_cache_file_is_detected_and_rebuilt() -> None:
    cfg = small(split_seed=7)
    good = load_splits(cfg).manifest
    folder = cache_root() / "splits" / good["cache_key"]
    target = folder / "target_images.npy"
    blob = bytearray(target.read_bytes())
    blob[-1] ^= 0xFF
    target.write_bytes(bytes(blob))
    again = load_splits(cfg)
    assert again.manifest["content_hash"] == good["content_hash"]
    assert np.array_equal(np.load(target), again.target.images.numpy())


def test_half_written_entry_is_never_read(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer killed before meta.json leaves files that readers ignore; they rebuild."""
    monkeypatch.setenv("NCTUNE_CACHE", str(tmp_path))
    parts = {"half": 1}
    calls = []

    def build() -> tuple[dict[str, np.ndarray], dict[str, object]]:
        calls.append(1)
        return {"a": np.full(1000, 7, np.uint8)}, {"note": "ok"}

    arrays, extra = cached_arrays("test-half", parts, build)
    assert isinstance(arrays["a"], np.memmap)
    folder = Path(str(arrays["a"].filename)).parent
    (folder / "meta.json").unlink()
    (folder / "a.npy").write_bytes((folder / "a.npy").read_bytes()[:100])  # truncated
    arrays, extra = cached_arrays("test-half", parts, build)
    assert len(calls) == 2 and extra["note"] == "ok" and arrays["a"].tolist() == [7] * 1000


def test_canonical_split_uses_the_sets_own_parts(folder_root: Path) -> None:
    cfg = small(name="folder", root=str(folder_root), split_mode="canonical",
                num_source_classes=4, num_target_classes=2, source_train_per_class=4,
                source_test_per_class=3, target_per_class=5)
    d = load_splits(cfg)
    assert set(d.source_train.class_names) == {"ant", "bee", "cat", "dog"}
    assert set(d.target.class_names) <= {"eel", "fox", "gnu"}
    assert d.manifest["canonical_split"] == "split file"
