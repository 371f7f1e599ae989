"""Few-shot classifiers in a registry (timm style): `@register_classifier(name)` + factory.

A classifier is two steps: `transform` maps the whole feature bank once (L2-normalise, centre),
then `scores` rates every way for every query of a chunk of episodes from inner products alone
(see `analysis.measure.fewshot_kernels`), so no classifier loops over episodes.

Registered here: the three nearest-class-centre (NCC) variants. The logistic probe ("logreg")
registers itself in `analysis.measure.fewshot_logreg`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from analysis.errors import InputError
from analysis.measure.fewshot_kernels import GATHER_WEIGHT, Kernel

_REGISTRY: dict[str, Callable[[], FewShotClassifier]] = {}
_T = TypeVar("_T", bound=Callable[[], "FewShotClassifier"])


class FewShotClassifier(ABC):
    """Base class: a feature transform and batched way scores over episodes."""

    name: str = ""
    requires_center: bool = False
    # Dtype the features are cast to before `transform`; None keeps float32/float64 as given
    # (half precision is widened to float32).
    compute_dtype: torch.dtype | None = None

    def transform(self, features: Tensor, center: Tensor | None) -> Tensor:
        """Map the (N, d) feature bank once, before any episode is evaluated."""
        return features

    @abstractmethod
    def scores(self, kernel: Kernel, support: Tensor, query: Tensor) -> Tensor:
        """Score of every way for every query; the predicted way is the highest.

        Args:
            kernel: inner products between transformed features.
            support: (B, n, k) row indices.
            query: (B, n, q) row indices.

        Returns:
            (B, n, n q) floating scores: [b, w, v q + j] scores way w for query[b, v, j].
        """

    def extra_elements(self, n_way: int, k_shot: int, q_query: int) -> int:
        """Largest temporary per episode beyond the kernel's, in elements (to size chunks)."""
        return 0

    def kernel_costs(
        self, n_way: int, k_shot: int, q_query: int, num_items: int, dim: int
    ) -> tuple[int, int]:
        """Per-episode work (multiply-adds) with gathered features, and with a Gram matrix.

        The default is NCC's: gathering reads n (k + q) rows, sums n k of them and takes n^2 q
        products of length d; a Gram matrix instead sums n k rows of length N.
        """
        gather = GATHER_WEIGHT * n_way * (k_shot + q_query) * dim
        gather += n_way * (k_shot + n_way * q_query) * dim
        return gather, n_way * k_shot * num_items + n_way * n_way * q_query


def register_classifier(name: str) -> Callable[[_T], _T]:
    """Decorator: register a zero-argument factory (usually the class) under `name`."""

    def decorator(factory: _T) -> _T:
        if name in _REGISTRY:
            raise ValueError(f"few-shot classifier {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_classifiers() -> list[str]:
    """Names of the registered classifiers, sorted."""
    return sorted(_REGISTRY)


def create_classifier(name: str) -> FewShotClassifier:
    """A new instance of the classifier registered as `name`.

    Raises:
        InputError: unknown name (the message lists the known ones).
    """
    if name not in _REGISTRY:
        raise InputError(f"unknown few-shot classifier {name!r}; known: {list_classifiers()}")
    clf = _REGISTRY[name]()
    clf.name = name
    return clf


class _NearestClassCentre(FewShotClassifier):
    """Nearest class centre: argmin_w ||x - p_w||^2 with p_w the mean of way w's support.

    With S_w the sum of the k support features of way w,
        ||x - S_w / k||^2 = ||x||^2 - (2/k) <x, S_w> + ||S_w||^2 / k^2,
    and ||x||^2 is the same for every way, so ranking ways by (k/2) times minus that,
        score_w = <x, S_w> - ||S_w||^2 / (2k),
    picks the nearest centre; it needs only inner products (Gram entries, no prototypes).
    """

    def scores(self, kernel: Kernel, support: Tensor, query: Tensor) -> Tensor:
        bsz, _, k_shot = support.shape
        cross, sqnorm = kernel.group_products(query.reshape(bsz, -1), support)
        return cross.sub_(sqnorm.mul_(0.5 / k_shot)[:, :, None])


@register_classifier("ncc_raw")
class NCCRaw(_NearestClassCentre):
    """NCC on the raw features: the classifier of the paper's few-shot analysis."""


@register_classifier("ncc_l2")
class NCCL2(_NearestClassCentre):
    """NCC on L2-normalised features (SimpleShot's L2N)."""

    def transform(self, features: Tensor, center: Tensor | None) -> Tensor:
        """L2-normalise each feature vector (no centring)."""
        return F.normalize(features, dim=1)


@register_classifier("ncc")
class NCCCentredL2(_NearestClassCentre):
    """NCC on centred-then-L2-normalised features (SimpleShot's CL2N), the primary classifier.

    The centre is supplied by the caller and must not come from the episodes themselves; the
    SimpleShot protocol uses the mean feature of the source (base) training set.
    """

    requires_center = True

    def transform(self, features: Tensor, center: Tensor | None) -> Tensor:
        """Subtract the source-train centre, then L2-normalise (SimpleShot's CL2N)."""
        if center is None:  # evaluate_episodes checks first; this guards direct use
            raise InputError("classifier 'ncc' needs `center` (e.g. the source-train mean)")
        return F.normalize(features - center, dim=1)
