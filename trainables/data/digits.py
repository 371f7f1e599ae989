"""`digits`: scikit-learn's bundled handwritten digits (1,797 images of 8×8, 10 classes).

Real handwriting that ships with scikit-learn, for smoke tests: about 180 images per class,
upsampled to the configured size. No canonical split.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import sklearn
from sklearn.datasets import load_digits

from analysis.errors import InputError
from trainables.data.images import resize_uint8
from trainables.data.registry import Catalog, Dataset, register_dataset


@register_dataset
class Digits(Dataset):
    """scikit-learn's `load_digits`, white ink on black, one channel."""

    name: ClassVar[str] = "digits"
    description: ClassVar[str] = "scikit-learn's 8x8 handwritten digits, for smoke tests"

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data: scikit-learn's version (it ships the images)."""
        if self.cfg.root is not None:
            raise InputError(f"dataset.root: digits ships with scikit-learn and reads no files; "
                             f"got {self.cfg.root!r}; leave it unset (null)")
        return {"sklearn": sklearn.__version__}

    def catalog(self) -> Catalog:
        """scikit-learn's 8x8 digits, scaled to 0-255 and resized: ten classes."""
        bunch = load_digits()
        # pixel values are 0..16 counts of set bits in 4x4 blocks of the original 32x32 scans
        images = np.round(bunch.images * (255 / 16)).astype(np.uint8)[:, None]
        images = resize_uint8(images, self.cfg.image_size)
        labels = np.asarray(bunch.target)
        members = [np.flatnonzero(labels == k) for k in range(10)]

        def read(c: int, idx: np.ndarray) -> np.ndarray:
            return images[members[c][idx]]

        return Catalog(
            class_names=[str(k) for k in range(10)],
            counts=np.array([len(m) for m in members]),
            channels=1,
            read=read,
        )

    @classmethod
    def summary(cls) -> str:
        """Classes and images, for `nctune datasets list`."""
        return "10 (~180 images each)"
