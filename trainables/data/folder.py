"""`folder`: any ImageFolder-style tree, `<root>/<class>/<image>`, plus an optional split file.

Every sub-folder of `dataset.root` holding at least one image file is a class (name = folder
name); images are read with PIL, converted to grayscale if the first one is grayscale, else RGB,
and resized to `dataset.image_size`.

The canonical split is the split file (`dataset.split_file`, default `<root>/split.json`):

    {"source": ["cat", "dog", ...], "target": ["fox", ...]}

Classes listed in neither are left out of the canonical split; `random` mode uses every class.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from analysis.errors import InputError
from trainables.data.images import decode_image, image_channels
from trainables.data.registry import (
    Catalog,
    Dataset,
    register_dataset,
    require_root,
    stat_fingerprint,
    walk_files,
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm")  # fmt: skip
LAYOUT = f"a folder of class folders, <root>/<class>/<image> ({', '.join(IMAGE_EXTENSIONS)})"
SPLIT_FORMAT = 'JSON {"source": [class, ...], "target": [class, ...]}'


def scan(root: Path) -> dict[str, list[Path]]:
    """Class folder name -> its image files (sorted), for folders with at least one image."""
    classes: dict[str, list[Path]] = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("."):
            files = [f for f in walk_files(Path(entry.path))
                     if f.name.lower().endswith(IMAGE_EXTENSIONS)]
            if files:
                classes[entry.name] = files
    if len(classes) < 2:
        found = ", ".join(sorted(os.listdir(root))[:5]) or "nothing"
        raise InputError(f"dataset.root: {root} is not an image-folder tree: it has "
                         f"{len(classes)} class folders with images (found: {found}). "
                         f"Expected: {LAYOUT}")
    return classes


@register_dataset
class ImageFolderSet(Dataset):
    """An ImageFolder tree with a JSON split file for the canonical split."""

    name: ClassVar[str] = "folder"
    canonical: ClassVar[str | None] = "split file"
    description: ClassVar[str] = "any <root>/<class>/<image> tree (+ split.json for canonical)"

    def _split_path(self, root: Path) -> Path:
        return Path(self.cfg.split_file).expanduser().resolve() if self.cfg.split_file \
            else root / "split.json"

    def _read_split(self, root: Path, classes: list[str]) -> dict[str, list[str]]:
        path = self._split_path(root)
        field = "dataset.split_file"
        if not path.is_file():
            raise InputError(f"{field}: {path} does not exist; the canonical split of a folder "
                             f"data set needs one, {SPLIT_FORMAT}; or use split_mode 'random'")
        try:
            spec = json.loads(path.read_text())
            parts = {p: [str(c) for c in spec[p]] for p in ("source", "target")}
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{field}: {path} is not {SPLIT_FORMAT} ({exc!r})") from None
        unknown = sorted(set(parts["source"] + parts["target"]) - set(classes))
        if unknown:
            raise InputError(f"{field}: {path} names classes with no folder under {root}: "
                             f"{', '.join(unknown[:5])}; known: {', '.join(classes[:10])}...")
        both = sorted(set(parts["source"]) & set(parts["target"]))
        if both:
            raise InputError(f"{field}: {path} lists classes as both source and target: "
                             f"{', '.join(both[:5])}")
        return parts

    def fingerprint(self) -> dict[str, Any]:
        """Sizes and times of every image (and the split file): a change rebuilds the cache."""
        root = require_root(self.cfg, LAYOUT)
        files = [f for fs in scan(root).values() for f in fs]
        out = {"files": stat_fingerprint(files)}
        if self.cfg.split_mode == "canonical":
            path = self._split_path(root)
            out["split_file"] = stat_fingerprint([path]) if path.is_file() else "absent"
        return out

    def catalog(self) -> Catalog:
        """One class per sub-folder of the root, parts from the split file in canonical mode."""
        root = require_root(self.cfg, LAYOUT)
        tree = scan(root)
        names = list(tree)
        files = list(tree.values())
        channels = image_channels(files[0][0])
        source_pool = target_pool = None
        if self.cfg.split_mode == "canonical":
            parts = self._read_split(root, names)
            source_pool = np.array([names.index(c) for c in parts["source"]], dtype=np.int64)
            target_pool = np.array([names.index(c) for c in parts["target"]], dtype=np.int64)
        size = self.cfg.image_size

        def read(c: int, idx: np.ndarray) -> np.ndarray:
            return np.stack([decode_image(files[c][i], channels, size) for i in idx])

        return Catalog(class_names=names, counts=np.array([len(f) for f in files]),
                       channels=channels, read=read, source_pool=source_pool,
                       target_pool=target_pool)
