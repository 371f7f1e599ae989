"""Fixtures for the data tests: the default glyph set (once per session) and tiny copies of every
real data set in its real on-disk format, read back through the real loaders.

Every fixture image is distinct (seeded noise or a drawn pattern), so a test can tell which file
a loaded image came from.
"""

from __future__ import annotations

import csv
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables.config import DatasetConfig
from trainables.data import DataSplits, load_splits

# CIFAR-100's 20 superclasses and their 5 classes each (Krizhevsky 2009, the dataset's own
# hierarchy), written out independently of trainables.data.cifar so the split lists there are
# checked against it.
CIFAR100_HIERARCHY = {
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}
CIFAR_TRAIN_PER_CLASS, CIFAR_TEST_PER_CLASS = 4, 2


@pytest.fixture(scope="session")
def glyph_splits() -> DataSplits:
    """The default data set with default options (built once; cached across sessions too)."""
    return load_splits(DatasetConfig())


def _omniglot_image(rng: np.random.Generator) -> Image.Image:
    """A 105x105 1-bit drawing like Omniglot's: black strokes on white."""
    canvas = np.ones((105, 105), bool)
    for _ in range(3):
        r, c = rng.integers(10, 90, size=2)
        canvas[r : r + rng.integers(4, 15), c : c + rng.integers(4, 15)] = False
    return Image.fromarray(canvas)


# (part, alphabet, characters, drawings each)
OMNIGLOT_LAYOUT = [
    ("images_background", "Latin", 3, 6),
    ("images_background", "Greek", 2, 6),
    ("images_evaluation", "Atlantean", 2, 6),
    ("images_evaluation", "Kannada", 3, 6),
]


def write_omniglot(base: Path, seed: int = 0) -> None:
    """images_background/ and images_evaluation/ under base, torchvision's layout."""
    rng = np.random.default_rng(seed)
    for part, alphabet, chars, drawings in OMNIGLOT_LAYOUT:
        for c in range(1, chars + 1):
            folder = base / part / alphabet / f"character{c:02d}"
            folder.mkdir(parents=True)
            for d in range(1, drawings + 1):
                _omniglot_image(rng).save(folder / f"{c:04d}_{d:02d}.png")


@pytest.fixture(scope="session")
def omniglot_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's download layout: <root>/omniglot-py/images_{background,evaluation}/..."""
    root = tmp_path_factory.mktemp("omniglot")
    write_omniglot(root / "omniglot-py")
    return root


@pytest.fixture(scope="session")
def omniglot_zip_root(tmp_path_factory: pytest.TempPathFactory, omniglot_root: Path) -> Path:
    """The original archives images_background.zip and images_evaluation.zip, same content."""
    root = tmp_path_factory.mktemp("omniglot-zip")
    src = omniglot_root / "omniglot-py"
    for part in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(root / f"{part}.zip", "w") as zf:
            zf.write(src / part, f"{part}/")
            for f in sorted((src / part).rglob("*")):
                zf.write(f, f.relative_to(src).as_posix())
    return root


def cifar_names() -> tuple[list[str], list[str], dict[str, str]]:
    """Fine names, coarse names (both sorted, as in CIFAR-100's meta) and fine -> coarse."""
    fine_to_coarse = {f: c for c, fs in CIFAR100_HIERARCHY.items() for f in fs.split()}
    return sorted(fine_to_coarse), sorted(CIFAR100_HIERARCHY), fine_to_coarse


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<root>/cifar-100-python/{train,test,meta}: pickles in CIFAR-100's python format,
    with a few seeded-noise images of every class."""
    root = tmp_path_factory.mktemp("cifar")
    base = root / "cifar-100-python"
    base.mkdir()
    fine, coarse, fine_to_coarse = cifar_names()
    rng = np.random.default_rng(1)
    for part, per in (("train", CIFAR_TRAIN_PER_CLASS), ("test", CIFAR_TEST_PER_CLASS)):
        labels = np.tile(np.arange(100), per)
        rng.shuffle(labels)
        data = rng.integers(0, 256, size=(labels.size, 3072), dtype=np.uint8)
        obj = {"filenames": [f"{part}_{i}.png" for i in range(labels.size)],
               "batch_label": f"{part} batch", "fine_labels": labels.tolist(),
               "coarse_labels": [coarse.index(fine_to_coarse[fine[k]]) for k in labels],
               "data": data}
        with (base / part).open("wb") as fh:
            pickle.dump(obj, fh)
    with (base / "meta").open("wb") as fh:
        pickle.dump({"fine_label_names": fine, "coarse_label_names": coarse}, fh)
    return root


MINI_PARTS = {"train": ["n01532829", "n01558993", "n01704323"],
              "val": ["n01855672", "n02091244"], "test": ["n01930112", "n01981276"]}
MINI_PER_CLASS = 6


@pytest.fixture(scope="session")
def miniimagenet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<root>/images/*.jpg plus Ravi & Larochelle-style train/val/test.csv."""
    root = tmp_path_factory.mktemp("mini")
    (root / "images").mkdir()
    rng = np.random.default_rng(2)
    for part, wnids in MINI_PARTS.items():
        with (root / f"{part}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["filename", "label"])
            for wnid in wnids:
                for i in range(1, MINI_PER_CLASS + 1):
                    name = f"{wnid}{i:08d}.jpg"
                    pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(root / "images" / name, quality=90)
                    w.writerow([name, wnid])
    return root


FOLDER_CLASSES = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"]
FOLDER_PER_CLASS = 7


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<root>/<class>/<image>.png (RGB noise, every image distinct) plus split.json."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(3)
    for name in FOLDER_CLASSES:
        (root / name).mkdir()
        for i in range(FOLDER_PER_CLASS):
            pixels = rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    (root / "split.json").write_text(
        '{"source": ["ant", "bee", "cat", "dog"], "target": ["eel", "fox", "gnu"]}')
    return root
