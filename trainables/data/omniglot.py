"""`omniglot`: Lake et al.'s handwritten characters (1,623 classes of 20 drawings, 50 alphabets).

Read from the files the user has, in any of three layouts under `dataset.root`:

* torchvision's: `omniglot-py/images_background/<alphabet>/<character>/*.png` (and evaluation);
* the same two folders directly under the root;
* the original archives `images_background.zip` / `images_evaluation.zip` (read in place).

Canonical split: the 30 background alphabets (964 characters) are source, the 20 evaluation
alphabets (659 characters) target. Ink is made white on black, like the other character sets.
`download: true` fetches the archives with torchvision when nothing is found.
"""

from __future__ import annotations

import zipfile
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

PARTS = ("images_background", "images_evaluation")  # canonical source, target
LAYOUT = ("a folder holding images_background/ and images_evaluation/ (each "
          "<alphabet>/<character>/*.png; torchvision's omniglot-py/ also works) or the original "
          "images_background.zip and images_evaluation.zip")  # fmt: skip


def find_parts(root: Path) -> dict[str, Path]:
    """The folder or zip of each part present under root (folders win over zips)."""
    found: dict[str, Path] = {}
    for base in (root / "omniglot-py", root):
        for part in PARTS:
            if part in found:
                continue
            if (base / part).is_dir():
                found[part] = base / part
            elif (base / f"{part}.zip").is_file():
                found[part] = base / f"{part}.zip"
    return found


def _members_from_names(part: str, names: list[str], where: Path) -> dict[str, list[str]]:
    """Group `<part>/<alphabet>/<character>/<file>.png` names into classes."""
    classes: dict[str, list[str]] = {}
    for name in names:
        bits = name.strip("/").split("/")
        if len(bits) == 4 and bits[0] == part and bits[3].lower().endswith(".png"):
            classes.setdefault(f"{bits[1]}/{bits[2]}", []).append(name)
    if not classes:
        sample = ", ".join(sorted(names)[:3]) or "nothing"
        raise InputError(f"dataset.root: {where} is not in Omniglot's layout: expected "
                         f"{part}/<alphabet>/<character>/*.png, found {sample}")
    return {k: sorted(v) for k, v in sorted(classes.items())}


def list_part(part: str, path: Path) -> dict[str, list[str]]:
    """Class name (`alphabet/character`) -> image names inside the folder's parent or zip."""
    if path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/")]
        except zipfile.BadZipFile as exc:
            raise InputError(f"dataset.root: {path} is not a readable zip file ({exc})") from None
        return _members_from_names(part, names, path)
    names = [f"{part}/{p.relative_to(path).as_posix()}" for p in walk_files(path)]
    return _members_from_names(part, names, path)


@register_dataset
class Omniglot(Dataset):
    """Omniglot from torchvision's folders or the original zips."""

    name: ClassVar[str] = "omniglot"
    canonical: ClassVar[str | None] = "background/evaluation"
    description: ClassVar[str] = "Omniglot handwritten characters (torchvision folders or zips)"

    def _parts(self) -> dict[str, Path]:
        root = require_root(self.cfg, LAYOUT, create=self.cfg.download)
        parts = find_parts(root)
        if len(parts) < 2 and self.cfg.download:
            from torchvision.datasets import Omniglot as TvOmniglot

            for background in (True, False):
                TvOmniglot(str(root), background=background, download=True)
            parts = find_parts(root)
        if not parts:
            raise InputError(f"dataset.root: {root} holds no Omniglot files. Expected: {LAYOUT}; "
                             "or set dataset.download: true")
        if self.cfg.split_mode == "canonical" and len(parts) < 2:
            missing = next(p for p in PARTS if p not in parts)
            raise InputError(f"dataset.split_mode: 'canonical' needs both parts of Omniglot but "
                             f"{root} lacks {missing}; add it or use split_mode 'random'")
        return parts

    def fingerprint(self) -> dict[str, Any]:
        """Sizes and times of the background/evaluation folders or zips."""
        parts = self._parts()
        return {part: stat_fingerprint([p]) if p.suffix == ".zip" else tree_fingerprint(p)
                for part, p in sorted(parts.items())}

    def catalog(self) -> Catalog:
        """One class per (alphabet, character), from folders or the official zips; background =
        train part."""
        parts = self._parts()
        names: list[str] = []
        files: list[list[str]] = []
        part_of: list[str] = []
        for part in PARTS:
            if part not in parts:
                continue
            for cls, members in list_part(part, parts[part]).items():
                names.append(cls)
                files.append(members)
                part_of.append(part)
        size = self.cfg.image_size
        zips = {part: p for part, p in parts.items() if p.suffix == ".zip"}

        def read(c: int, idx: np.ndarray) -> np.ndarray:
            part = part_of[c]
            chosen = [files[c][i] for i in idx]
            if part in zips:
                with zipfile.ZipFile(zips[part]) as zf:
                    blobs: list[Path | bytes] = [zf.read(n) for n in chosen]
            else:
                blobs = [parts[part].parent / n for n in chosen]
            return np.stack([decode_image(b, 1, size, invert=True) for b in blobs])

        return Catalog(
            class_names=names,
            counts=np.array([len(f) for f in files]),
            channels=1,
            read=read,
            source_pool=np.flatnonzero([p == PARTS[0] for p in part_of]),
            target_pool=np.flatnonzero([p == PARTS[1] for p in part_of]),
            info={"parts": {p: str(parts[p]) for p in sorted(parts)}},
        )

    @classmethod
    def summary(cls) -> str:
        """Classes in total (background/evaluation), for `nctune datasets list`."""
        return "1623 (964/659)"
