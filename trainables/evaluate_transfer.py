"""Transferability estimators and the Cantelli bound on a trial's target features.

Both read what `trainables.evaluate` already extracted (target features, labels, and the source
head's logits on the target images); nothing is extracted again. Kept apart from evaluate.py so
that the evaluation gains one call and every estimator's definition stays in
`analysis.measure.transfer` and `analysis.measure.bound`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from analysis import contract as names
from analysis.measure.bound import cantelli_bound_from_moments, pair_moments
from analysis.measure.fewshot_classifiers import create_classifier
from analysis.measure.transfer import transfer_metrics


def transfer_and_bound(features: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor,
                       estimators: Iterable[str], shapes: Iterable[str],
                       center: torch.Tensor) -> dict[str, float]:
    """`transfer/<name>/target` for each estimator and `bound_cantelli/<shape>` for each shape.

    The Cantelli bound is about the primary few-shot classifier, so it is computed on the
    target features as that classifier sees them (centred on `center`, then L2-normalised).
    """
    estimators = list(estimators)
    values = transfer_metrics(features, labels, logits, estimators) if estimators else {}
    out = {names.transfer_key(name): float(v) for name, v in values.items()}
    primary = create_classifier(names.PRIMARY_CLASSIFIER).transform(features, center)
    moments = pair_moments(primary, labels)  # once: they do not depend on the shape
    for shape in shapes:
        n_way, k_shot = names.parse_shape(shape)
        out[names.bound_cantelli_key(shape)] = cantelli_bound_from_moments(moments, n_way,
                                                                           k_shot)
    return out
