"""`cifar-fs` and `fc100`: few-shot splits of CIFAR-100, read from its python-version files.

Both pool CIFAR-100's train and test files (600 images of 32×32 per class) and differ only in
which classes form the train / val / test parts of the canonical split:

* CIFAR-FS (Bertinetto, Henriques, Torr & Vedaldi, "Meta-learning with differentiable
  closed-form solvers", ICLR 2019): 64 / 16 / 20 classes drawn at random. The lists below are
  those of the authors' split files (github.com/bertinetto/r2d2, data/CIFAR_FS/splits/
  bertinetto/{train,val,test}.txt), as also shipped by torchmeta
  (torchmeta/datasets/assets/cifar100/cifar-fs/*.json).
* FC100 (Oreshkin, Rodríguez & Lacoste, "TADAM: Task dependent adaptive metric for improved
  few-shot learning", NeurIPS 2018): split by superclass so the parts share little, 12 / 4 / 4
  superclasses = 60 / 20 / 20 classes (lists as in torchmeta's cifar100/fc100/*.json and
  learn2learn's FC100: superclass ids 1-6, 9, 10, 15, 17-19 / 8, 11, 13, 16 / 0, 7, 12, 14).

Source classes come from the train part; target classes from `dataset.target_part` (test by
default, or val, or val+test). `random` mode ignores the parts and uses all 100 classes.
`download: true` fetches CIFAR-100 with torchvision when the files are missing.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from analysis.errors import InputError
from trainables.data.images import resize_uint8
from trainables.data.registry import (
    Catalog,
    Dataset,
    register_dataset,
    require_root,
    stat_fingerprint,
)

CIFAR_FS_VAL = [
    "beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly", "sea",
    "camel", "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor",
]
CIFAR_FS_TEST = [
    "whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe", "leopard",
    "plain", "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman", "bicycle",
    "pickup_truck", "rocket",
]
CIFAR_FS_TRAIN = [
    "dolphin", "seal", "aquarium_fish", "ray", "trout", "orchid", "sunflower", "tulip", "bottle",
    "bowl", "can", "cup", "plate", "apple", "mushroom", "orange", "pear", "clock", "keyboard",
    "chair", "couch", "bee", "caterpillar", "cockroach", "bear", "lion", "tiger", "wolf", "bridge",
    "castle", "house", "road", "skyscraper", "cloud", "forest", "mountain", "elephant", "kangaroo",
    "porcupine", "possum", "raccoon", "skunk", "lobster", "spider", "boy", "girl", "dinosaur",
    "lizard", "snake", "turtle", "hamster", "mouse", "rabbit", "shrew", "squirrel", "oak_tree",
    "palm_tree", "pine_tree", "willow_tree", "bus", "train", "lawn_mower", "streetcar", "tank",
]
FC100_TRAIN = [
    "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "reptiles", "trees", "vehicles_1", "vehicles_2",
]
FC100_VAL = [
    "large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates",
    "small_mammals",
]
FC100_TEST = ["aquatic_mammals", "insects", "medium_mammals", "people"]

LAYOUT = ("the folder holding cifar-100-python/ (or that folder itself) with CIFAR-100's "
          "python-version files train, test and meta")  # fmt: skip
FILES = ("train", "test", "meta")


def find_files(root: Path) -> Path | None:
    """The folder with train/test/meta, or None."""
    for base in (root / "cifar-100-python", root):
        if all((base / f).is_file() for f in FILES):
            return base
    return None


def _unpickle(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            obj = pickle.load(fh, encoding="latin1")
        return {k: obj[k] for k in keys}
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"dataset.root: {path} is not a CIFAR-100 python-version file "
                         f"(expected a pickled dict with {', '.join(keys)}; {exc!r})") from None


def load_cifar100(base: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """Images uint8 (60000, 3, 32, 32), fine and coarse labels, fine and coarse names."""
    meta = _unpickle(base / "meta", ("fine_label_names", "coarse_label_names"))
    parts = [_unpickle(base / f, ("data", "fine_labels", "coarse_labels")) for f in FILES[:2]]
    data = np.concatenate([np.asarray(p["data"], dtype=np.uint8) for p in parts])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise InputError(f"dataset.root: {base} holds arrays of shape {data.shape}; CIFAR-100 "
                         "rows are 3072 bytes (3x32x32)")
    fine = np.concatenate([np.asarray(p["fine_labels"]) for p in parts])
    coarse = np.concatenate([np.asarray(p["coarse_labels"]) for p in parts])
    return (data.reshape(-1, 3, 32, 32), fine, coarse, list(meta["fine_label_names"]),
            list(meta["coarse_label_names"]))


class _Cifar100Split(Dataset):
    """Shared loader; subclasses say how the 100 classes divide into train / val / test."""

    canonical: ClassVar[str | None] = "train/val/test"
    mirror_invariant: ClassVar[bool] = True

    def parts(self, fine_names: list[str], fine_to_coarse: dict[str, str]) -> dict[
        str, list[str]
    ]:
        raise NotImplementedError

    def _base(self) -> Path:
        root = require_root(self.cfg, LAYOUT, create=self.cfg.download)
        base = find_files(root)
        if base is None and self.cfg.download:
            from torchvision.datasets import CIFAR100

            CIFAR100(str(root), train=True, download=True)
            base = find_files(root)
        if base is None:
            raise InputError(f"dataset.root: {root} lacks CIFAR-100's python files. Expected: "
                             f"{LAYOUT}; or set dataset.download: true")
        return base

    def fingerprint(self) -> dict[str, Any]:
        base = self._base()
        return {"files": stat_fingerprint([base / f for f in FILES]),
                "target_part": self.cfg.target_part}

    def catalog(self) -> Catalog:
        images, fine, coarse, fine_names, coarse_names = load_cifar100(self._base())
        fine_to_coarse = {fine_names[f]: coarse_names[c] for f, c in zip(fine, coarse,
                                                                          strict=True)}
        parts = self.parts(fine_names, fine_to_coarse)
        missing = sorted(set().union(*parts.values()) - set(fine_names))
        if missing:
            raise InputError(f"dataset.root: the CIFAR-100 files lack classes of the "
                             f"{self.name} split: {', '.join(missing[:5])}")
        members = [np.flatnonzero(fine == k) for k in range(len(fine_names))]
        size = self.cfg.image_size
        pool = {p: np.array(sorted(fine_names.index(n) for n in names))
                for p, names in parts.items()}
        target = np.concatenate([pool[p] for p in self.cfg.target_part.split("+")])

        def read(c: int, idx: np.ndarray) -> np.ndarray:
            return resize_uint8(images[members[c][idx]], size)

        return Catalog(class_names=fine_names, counts=np.array([len(m) for m in members]),
                       channels=3, read=read, source_pool=pool["train"],
                       target_pool=np.sort(target), info={"target_part": self.cfg.target_part})


@register_dataset
class CifarFS(_Cifar100Split):
    """CIFAR-FS: CIFAR-100's classes split 64/16/20 as Bertinetto et al. (2019)."""
    name: ClassVar[str] = "cifar-fs"
    description: ClassVar[str] = "CIFAR-FS (Bertinetto et al. 2019), from CIFAR-100"

    def parts(self, fine_names: list[str], fine_to_coarse: dict[str, str]) -> dict[
        str, list[str]
    ]:
        """The published CIFAR-FS class lists per part."""
        return {"train": CIFAR_FS_TRAIN, "val": CIFAR_FS_VAL, "test": CIFAR_FS_TEST}

    @classmethod
    def summary(cls) -> str:
        """Classes in total (train/val/test), for `nctune datasets list`."""
        return "100 (64/16/20)"


@register_dataset
class FC100(_Cifar100Split):
    """FC100: CIFAR-100 split by superclass 60/20/20 (Oreshkin et al. 2018), so target classes are
    semantically far."""
    name: ClassVar[str] = "fc100"
    description: ClassVar[str] = "FC100 (Oreshkin et al. 2018), split by superclass, from CIFAR-100"

    def parts(self, fine_names: list[str], fine_to_coarse: dict[str, str]) -> dict[
        str, list[str]
    ]:
        """Fine classes of the train, val and test superclasses."""
        by_super = {"train": FC100_TRAIN, "val": FC100_VAL, "test": FC100_TEST}
        missing = sorted(set().union(*by_super.values()) - set(fine_to_coarse.values()))
        if missing:
            raise InputError(f"dataset.root: the CIFAR-100 files lack superclasses of the fc100 "
                             f"split: {', '.join(missing[:5])}")
        return {p: [f for f in fine_names if fine_to_coarse.get(f) in set(supers)]
                for p, supers in by_super.items()}

    @classmethod
    def summary(cls) -> str:
        """Classes in total (train/val/test), for `nctune datasets list`."""
        return "100 (60/20/20)"
