"""The registry of data sets: a decorator, a factory, and what a data set must provide.

timm style: each family module defines a `Dataset` subclass decorated with `@register_dataset`;
`create_dataset(cfg)` looks the name up (an unknown name is an InputError listing the known
ones). A data set answers two questions:

* `fingerprint()` - cheap: checks the options and files, and returns what identifies the
  content (file sizes and times, versions). It keys the on-disk split cache, so a trial whose
  splits are cached never opens the raw files.
* `catalog()` - the classes, images per class, the canonical source/target pools, and a reader
  for any images of one class. `trainables.data.splits` does the rest, the same for every set.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from analysis.errors import InputError
from trainables.config import DatasetConfig


@dataclass(frozen=True)
class Catalog:
    """Everything `splits` needs to know about a data set's images.

    Attributes:
        class_names: unique names, index = class id in this catalog.
        counts: images available per class.
        channels: 1 (grayscale) or 3 (RGB).
        read: `read(class_id, image_indices)` -> uint8 (n, channels, S, S) at the configured size.
        source_pool: canonical split, the classes source classes are drawn from (None: no
            canonical split).
        target_pool: canonical split, the classes target classes are drawn from.
        order_block: images of a class are shuffled within consecutive blocks of this size (0: all
            at once), so a set that grows by whole blocks keeps its first images.
        info: JSON-able facts for the manifest.
    """

    class_names: list[str]
    counts: np.ndarray
    channels: int
    read: Callable[[int, np.ndarray], np.ndarray]
    source_pool: np.ndarray | None = None
    target_pool: np.ndarray | None = None
    order_block: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class Dataset(ABC):
    """One data set family; subclasses set the class variables and implement two methods."""

    name: ClassVar[str]
    description: ClassVar[str]
    canonical: ClassVar[str | None] = None  # name of the data set's own split, if it has one
    # Does a mirror image keep its class? Photos yes; characters and digits no (b vs d).
    mirror_invariant: ClassVar[bool] = False

    def __init__(self, cfg: DatasetConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """Validate options and files cheaply; return what identifies the content (JSON-able)."""

    @abstractmethod
    def catalog(self) -> Catalog:
        """Load the class list and make the image reader (may take a while; cached by callers)."""

    @classmethod
    def summary(cls) -> str:
        """Class counts for `nctune datasets list`, without reading user files."""
        return "from the files"


_REGISTRY: dict[str, type[Dataset]] = {}
D = TypeVar("D", bound=type[Dataset])


def register_dataset(cls: D) -> D:
    """Class decorator: make a `Dataset` subclass available under its `name`."""
    if cls.name in _REGISTRY:
        raise ValueError(f"data set {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def list_datasets() -> list[str]:
    """Names of the registered data sets, sorted."""
    return sorted(_REGISTRY)


def get_dataset_class(name: str) -> type[Dataset]:
    """The registered class for `name`; InputError listing the known names if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(
            f"dataset.name: unknown data set {name!r}; known: {', '.join(list_datasets())}"
        ) from None


def create_dataset(cfg: DatasetConfig) -> Dataset:
    """Instantiate the data set named by `cfg.name` with its options."""
    return get_dataset_class(cfg.name)(cfg)


# --- helpers shared by the families that read files -------------------------------------------


def require_root(cfg: DatasetConfig, hint: str, create: bool = False) -> Path:
    """`cfg.root` as an existing folder, or an InputError naming the field and the layout.

    Args:
        cfg: the options; `cfg.root` is the folder.
        hint: the expected layout, for the message.
        create: make the folder if it is missing (for `download: true`).
    """
    if cfg.root is None:
        raise InputError(f"dataset.root: {cfg.name} reads files and needs a folder; got none. "
                         f"Expected: {hint}")
    root = Path(cfg.root).expanduser().resolve()
    if create:
        root.mkdir(parents=True, exist_ok=True)
    if not root.exists():
        raise InputError(f"dataset.root: {root} does not exist. Expected: {hint}")
    if not root.is_dir():
        raise InputError(f"dataset.root: {root} is not a folder. Expected: {hint}")
    return root


def stat_fingerprint(paths: list[Path]) -> str:
    """Hash of the paths, sizes and modification times: changes when the files do."""
    h = hashlib.sha256()
    for p in sorted(paths):
        st = os.stat(p)
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def tree_fingerprint(root: Path) -> str:
    """`stat_fingerprint` of every file under `root` (a walk; fine for ~1e5 files)."""
    return stat_fingerprint(walk_files(root))


def walk_files(root: Path) -> list[Path]:
    """Every file under `root`, following symbolic links to folders and files, sorted.

    The one folder walk of the loaders: users link data sets into place (a class or alphabet
    folder that is a link to another disk), and Python 3.11's `Path.rglob` and `os.walk` (by
    default) do not descend into linked folders, so such a tree would read as empty. Paths are
    spelled as reached from `root` (through the links, not resolved), so `relative_to(root)`
    gives the layout's names. A linked folder that is one of its own ancestors (a link cycle)
    is not entered again; a folder reached by two different links is walked under each.
    Broken links and other non-files are left out.

    Raises:
        InputError: a folder under `root` cannot be read (naming it and the reason).
    """
    found: list[Path] = []
    stack = [(os.fspath(root), frozenset({_identity(os.stat(root))}))]
    while stack:
        folder, ancestors = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            raise InputError(f"dataset.root: cannot read the folder {folder} "
                             f"({exc.strerror or exc})") from None
        for entry in entries:
            if entry.is_dir():  # follows links
                identity = _identity(entry.stat())
                if identity not in ancestors:
                    stack.append((entry.path, ancestors | {identity}))
            elif entry.is_file():
                found.append(Path(entry.path))
    return sorted(found)


def _identity(st: os.stat_result) -> tuple[int, int]:
    """A folder's (device, inode): the same for every link that leads to it."""
    return st.st_dev, st.st_ino
