"""The embedded `glyphs` set: its classes, homoglyph merging, variety, sizes, and a cache that two
processes may build at the same moment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from trainables.config import DatasetConfig
from trainables.data import DataSplits, load_splits
from trainables.data.glyph_fonts import (
    FACES,
    HOMOGLYPH_CORR,
    MERGE_RES,
    MIN_FACES,
    SOURCE_SCRIPTS,
    glyph_classes,
    load_faces,
    merge_homoglyphs,
    render,
)
from trainables.data.glyphs import Glyphs


def class_of(ch: str) -> int:
    return next(i for i, c in enumerate(glyph_classes()) if ch in c.members)


def test_several_hundred_classes_from_the_shipped_faces() -> None:
    classes = glyph_classes()
    assert 300 <= len(classes) <= 1000
    assert not any("LastResort" in f for f in FACES) and len(FACES) == 16
    members = [ch for c in classes for ch in c.members]
    assert len(members) == len(set(members))  # every character in one class only
    for c in classes:
        for ch, faces in zip(c.members, c.faces, strict=True):
            assert len(faces) >= MIN_FACES
            assert unicodedata.category(ch) in {"Lu", "Ll", "Lt", "Lo", "Nd"}
            assert unicodedata.normalize("NFD", ch) == ch  # no letter-plus-accent
    assert Glyphs.summary().startswith(f"{len(classes)} ")


def test_homoglyphs_are_merged_and_case_is_kept() -> None:
    assert class_of("A") == class_of("Α") == class_of("А")  # Latin, Greek, Cyrillic A
    assert class_of("o") != class_of("O")
    assert class_of("x") != class_of("X")
    assert class_of("a") != class_of("b")


def test_no_two_classes_have_mean_renders_correlated_above_threshold() -> None:
    """Recompute every class's mean clean render from the fonts and correlate all pairs."""
    faces = load_faces()
    means = []
    for c in glyph_classes():
        renders = [render(faces[f], ch, 2 * MERGE_RES) for ch, f in c.pairs()]
        hi = np.mean([r for r in renders if r is not None], axis=0)
        means.append(hi.reshape(MERGE_RES, 2, MERGE_RES, 2).mean(axis=(1, 3)).ravel())
    corr = np.corrcoef(np.array(means))
    np.fill_diagonal(corr, -1)
    assert corr.max() <= HOMOGLYPH_CORR


def test_merge_joins_what_correlates_and_only_that() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random(64), rng.random(64)
    items = np.stack([a, a + 0.01 * rng.random(64), b, b + 0.01 * rng.random(64), rng.random(64)])
    groups = merge_homoglyphs(items, np.ones(5), 0.95)
    assert sorted(groups) == [[0, 1], [2, 3], [4]]


def test_canonical_split_is_by_script() -> None:
    d = load_splits(DatasetConfig(split_mode="canonical", num_source_classes=30,
                                  num_target_classes=20, image_size=16))
    by_name = {c.name: c for c in glyph_classes()}
    assert all(any(s in SOURCE_SCRIPTS for s in by_name[n].scripts)
               for n in d.source_train.class_names)
    assert all(not set(by_name[n].scripts) & set(SOURCE_SCRIPTS) for n in d.target.class_names)
    assert d.manifest["canonical_split"] == "script"


def test_images_vary_within_a_class_and_differ_between_classes(glyph_splits: DataSplits) -> None:
    x = glyph_splits.source_train.images.numpy().astype(np.float64)[:, 0]
    y = glyph_splits.source_train.labels.numpy()
    assert x.std() > 20 and 0 < x.mean() < 128  # white ink on a dark background
    means = np.stack([x[y == k].mean(0) for k in range(10)])
    within = np.mean([x[y == k].std(0).mean() for k in range(10)])
    assert within > 10  # warps, faces, strokes, noise
    # class means are far apart relative to noise: nearest-mean classifies the training set
    d = ((x[y < 10, None] - means[None]) ** 2).sum((-2, -1))
    assert (d.argmin(1) == y[y < 10]).mean() > 0.6


def test_strength_zero_gives_clean_renders() -> None:
    """Without warps, strokes or noise every image is one of its class's clean renders."""
    opts = {"num_source_classes": 4, "num_target_classes": 2, "source_train_per_class": 30,
            "source_test_per_class": 2, "target_per_class": 2, "image_size": 16}
    by_name = {c.name: c for c in glyph_classes()}
    for strength, clean in ((0.0, True), (1.0, False)):
        split = load_splits(DatasetConfig(data_strength=strength, **opts)).source_train
        x, labels = split.images.numpy(), split.labels.numpy()
        for k, name in enumerate(split.class_names):
            distinct = len({im.tobytes() for im in x[labels == k]})
            assert (distinct <= len(by_name[name].pairs())) == clean or distinct == 30


def test_28_pixels_like_mnist() -> None:
    d = load_splits(DatasetConfig(num_source_classes=6, num_target_classes=4, image_size=28))
    assert d.source_train.images.shape == (6 * 15, 1, 28, 28)
    assert d.target.images.shape == (4 * 20, 1, 28, 28)


CHILD = """
import json, sys
from trainables.config import DatasetConfig
from trainables.data import load_splits
d = load_splits(DatasetConfig(num_source_classes=6, num_target_classes=4, image_size=28))
x = d.source_train.images.numpy()
print(json.dumps({"hash": d.manifest["content_hash"], "sum": int(x.sum()), "n": len(x)}))
"""


@pytest.mark.slow
def test_two_processes_building_the_cache_at_once_agree(tmp_path: Path) -> None:
    """Both start on an empty cache at the same moment; one builds, the other waits; both read
    the same complete data, and it equals what this process builds on its own."""
    env = {**os.environ, "NCTUNE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert outs[0] == outs[1] and outs[0]["n"] == 6 * 15
    here = load_splits(DatasetConfig(num_source_classes=6, num_target_classes=4, image_size=28))
    assert here.manifest["content_hash"] == outs[0]["hash"]
    assert not list((tmp_path / "cache").rglob(".*.tmp-*"))  # no temp files left behind
