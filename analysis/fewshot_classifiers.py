"""Few-shot classifiers in a registry (timm style): `@register_classifier(name)` + factory.

A classifier is two steps: `transform` maps the whole feature bank once (L2-normalise, centre),
then `predict` labels the queries of a chunk of episodes from inner products alone (see
`analysis.fewshot_kernels`), so no classifier loops over episodes.

Registered here: the three nearest-class-centre (NCC) variants. The logistic probe ("logreg")
registers itself in `analysis.fewshot_logreg`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from analysis.errors import InputError
from analysis.fewshot_kernels import Kernel

_REGISTRY: dict[str, Callable[[], FewShotClassifier]] = {}
_T = TypeVar("_T", bound=Callable[[], "FewShotClassifier"])


class FewShotClassifier(ABC):
    """Base class: a feature transform and a batched predictor over episodes."""

    name: str = ""
    requires_center: bool = False
    # Dtype the features are cast to before `transform`; None keeps float32/float64 as given
    # (half precision is widened to float32).
    compute_dtype: torch.dtype | None = None

    def transform(self, features: Tensor, center: Tensor | None) -> Tensor:
        """Map the (N, d) feature bank once, before any episode is evaluated."""
        return features

    @abstractmethod
    def predict(self, kernel: Kernel, support: Tensor, query: Tensor) -> Tensor:
        """Predicted way (0..n-1) of every query.

        Args:
            kernel: inner products between transformed features.
            support: (B, n, k) row indices.
            query: (B, n, q) row indices.

        Returns:
            (B, n, q) int64 predicted way index; query[:, w] is correct where it equals w.
        """

    def extra_elements(self, n_way: int, k_shot: int, q_query: int) -> int:
        """Largest temporary per episode beyond the kernel's, in elements (to size chunks)."""
        return 0


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
    and ||x||^2 is the same for every way, so the prediction is
        argmax_w (2/k) <x, S_w> - ||S_w||^2 / k^2,
    which needs only inner products (a Gram-matrix gather, no prototype tensor).
    """

    def predict(self, kernel: Kernel, support: Tensor, query: Tensor) -> Tensor:
        bsz, n_way, k_shot = support.shape
        q_query = query.shape[2]
        cross = kernel.cross_sum(query.reshape(bsz, n_way * q_query), support)  # (B, nq, n)
        sqnorm = kernel.group_sqnorm(support)  # (B, n)
        score = cross * (2.0 / k_shot) - sqnorm[:, None, :] / float(k_shot * k_shot)
        return score.argmax(dim=-1).view(bsz, n_way, q_query)


@register_classifier("ncc_raw")
class NCCRaw(_NearestClassCentre):
    """NCC on the raw features: the classifier of the paper's few-shot analysis."""


@register_classifier("ncc_l2")
class NCCL2(_NearestClassCentre):
    """NCC on L2-normalised features (SimpleShot's L2N)."""

    def transform(self, features: Tensor, center: Tensor | None) -> Tensor:
        return F.normalize(features, dim=1)


@register_classifier("ncc")
class NCCCentredL2(_NearestClassCentre):
    """NCC on centred-then-L2-normalised features (SimpleShot's CL2N), the primary classifier.

    The centre is supplied by the caller and must not come from the episodes themselves; the
    SimpleShot protocol uses the mean feature of the source (base) training set.
    """

    requires_center = True

    def transform(self, features: Tensor, center: Tensor | None) -> Tensor:
        if center is None:  # evaluate_episodes checks first; this guards direct use
            raise InputError("classifier 'ncc' needs `center` (e.g. the source-train mean)")
        return F.normalize(features - center, dim=1)
