"""`mini-imagenet`: Vinyals et al.'s 100-class ImageNet subset with Ravi & Larochelle's split.

Ravi & Larochelle ("Optimization as a model for few-shot learning", ICLR 2017) published the split
as three CSV files (`filename,label`: 64 train, 16 val, 20 test classes, 600 images each) over an
`images/` folder. The user supplies those files (there is no downloader: the images come from
ImageNet under its licence):

    <root>/images/n0153282900000005.jpg ...
    <root>/train.csv  <root>/val.csv  <root>/test.csv     (or under <root>/split/)

Images are resized to `dataset.image_size` (84 in most papers). Source classes come from the
train part, target classes from `dataset.target_part`.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from analysis.errors import InputError
from trainables.data.images import decode_image
from trainables.data.registry import (
    Catalog,
    Dataset,
    register_dataset,
    require_root,
    stat_fingerprint,
    tree_fingerprint,
    walk_files,
)

PARTS = ("train", "val", "test")
LAYOUT = ("a folder with images/ (the .jpg files) and Ravi & Larochelle's train.csv, val.csv "
          "and test.csv (columns filename,label), the CSVs directly inside or under split/")


def find_csvs(root: Path) -> dict[str, Path]:
    """The train/val/test CSV files of the Ravi & Larochelle split, at the root or in split(s)/."""
    for base in (root, root / "split", root / "splits"):
        if all((base / f"{p}.csv").is_file() for p in PARTS):
            return {p: base / f"{p}.csv" for p in PARTS}
    return {}


def read_csv(path: Path) -> dict[str, list[str]]:
    """Class (wnid) -> file names, in file order."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        head = ",".join(rows[0]) if rows else "an empty file"
        raise InputError(f"dataset.root: {path} is not a mini-ImageNet split file: expected the "
                         f"header 'filename,label', found {head!r}")
    out: dict[str, list[str]] = {}
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise InputError(f"dataset.root: {path} line {i} has {len(row)} fields; expected "
                             "filename,label")
        out.setdefault(row[1], []).append(row[0])
    return out


@register_dataset
class MiniImageNet(Dataset):
    """mini-ImageNet from an images folder and the Ravi & Larochelle CSVs."""

    name: ClassVar[str] = "mini-imagenet"
    canonical: ClassVar[str | None] = "train/val/test"
    mirror_invariant: ClassVar[bool] = True
    description: ClassVar[str] = "mini-ImageNet (Ravi & Larochelle split): images/ + CSVs"

    def _files(self) -> tuple[Path, dict[str, Path]]:
        root = require_root(self.cfg, LAYOUT)
        csvs = find_csvs(root)
        if not csvs or not (root / "images").is_dir():
            lack = "the split CSVs" if not csvs else "images/"
            hint = "; there is no downloader for it" if self.cfg.download else ""
            raise InputError(f"dataset.root: {root} lacks {lack}. Expected: {LAYOUT}{hint}")
        return root / "images", csvs

    def fingerprint(self) -> dict[str, Any]:
        """Sizes and times of the CSVs and the image tree: a change rebuilds the cache."""
        images, csvs = self._files()
        # sizes and times of 60,000 files: a fraction of a second
        return {"csv": stat_fingerprint(list(csvs.values())), "images": tree_fingerprint(images),
                "target_part": self.cfg.target_part}

    def catalog(self) -> Catalog:
        """Classes and image files per the split CSVs, each class tagged with its part."""
        images, csvs = self._files()
        names: list[str] = []
        files: list[list[str]] = []
        part_of: list[str] = []
        for part in PARTS:
            for wnid, members in read_csv(csvs[part]).items():
                if wnid in names:
                    raise InputError(f"dataset.root: class {wnid} is listed in more than one "
                                     f"split CSV (again in {csvs[part].name})")
                names.append(wnid)
                files.append(members)
                part_of.append(part)
        present = {f.relative_to(images).as_posix() for f in walk_files(images)}
        absent = [f for fs in files for f in fs if f not in present]
        if absent:
            raise InputError(f"dataset.root: {len(absent)} images named in the split CSVs are "
                             f"missing from {images} (first: {absent[0]})")
        size = self.cfg.image_size

        def read(c: int, idx: np.ndarray) -> np.ndarray:
            return np.stack([decode_image(images / files[c][i], 3, size) for i in idx])

        targets = set(self.cfg.target_part.split("+"))
        return Catalog(
            class_names=names,
            counts=np.array([len(f) for f in files]),
            channels=3,
            read=read,
            source_pool=np.flatnonzero([p == "train" for p in part_of]),
            target_pool=np.flatnonzero([p in targets for p in part_of]),
            info={"target_part": self.cfg.target_part},
        )

    @classmethod
    def summary(cls) -> str:
        """Classes in total (train/val/test), for `nctune datasets list`."""
        return "100 (64/16/20)"
