"""Transferability estimators on a trial's target features: the registry and the one entry point.

`transfer_metrics(features, labels, logits, names)` computes the requested estimators of
`analysis.contract.ESTIMATORS` on features the evaluation already extracted (and the source
head's logits on the same target images, for LEEP and NCE) and returns {estimator: value};
the caller names them with `contract.transfer_key`. Definitions, citations and formulas live
with each estimator:

    logme, hscore                      analysis.measure.transfer_linear
    leep, nce                          analysis.measure.transfer_source
    gbc, sfda, ncti_seli/ncc/vc        analysis.measure.transfer_gaussian
    knn                                here

Orientation: every estimator is higher-is-better except `ncti_vc` (a within-class spread).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from analysis.contract import ESTIMATORS
from analysis.errors import InputError
from analysis.measure.transfer_gaussian import gbc, ncti_parts, sfda
from analysis.measure.transfer_linear import as_f64, hscore, logme
from analysis.measure.transfer_source import leep, nce

# k of the k-NN estimator. With 20 images per target class (the demo), 19 same-class
# neighbours remain after leaving one out, so k = 5 can be unanimous for a well-clustered
# class while averaging over single stray neighbours (1-NN is the noisiest vote); it also
# matches the 5 support images of the primary 5-way 5-shot episodes. k shrinks to the
# smallest class size minus one when classes are smaller.
KNN_K = 5

_ROWS = 2048  # similarity rows formed at once (2048 x N float64)
Estimator = Callable[[Tensor, Tensor, Tensor | None], dict[str, float]]
LOGIT_ESTIMATORS = ("leep", "nce")  # read the source head's logits; the rest read features


def knn_loo_accuracy(features: Tensor, labels: Tensor, k: int = KNN_K) -> float:
    """Leave-one-out k-nearest-neighbour accuracy with cosine similarity.

    Each target image is classified by the majority label of its k most cosine-similar other
    target images (itself left out); ties between labels go to the label whose tied
    neighbours have the larger summed similarity. Accuracy = share classified correctly.
    1 on well separated clusters, about 1/C on features that carry no label information.
    k = min(KNN_K, smallest class size - 1). Plain k-NN accuracy outranked 23 transferability
    metrics in a 2025 comparison (arXiv 2503.18528).
    """
    x, y = as_f64(features, labels)
    k = max(1, min(k, int(torch.bincount(y).min()) - 1, len(y) - 1))
    xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
    tops = []
    for start in range(0, len(xn), _ROWS):  # row blocks: never the whole N x N at once
        sim = xn[start:start + _ROWS] @ xn.T
        rows = torch.arange(start, start + len(sim), device=sim.device)
        sim[rows - start, rows] = -float("inf")  # leave each image out of its own vote
        tops.append(sim.topk(k, dim=1))
    top_sim = torch.cat([t.values for t in tops])
    top_idx = torch.cat([t.indices for t in tops])
    classes = int(y.max()) + 1
    votes = torch.zeros(len(y), classes, dtype=torch.float64, device=x.device)
    votes.scatter_add_(1, y[top_idx], torch.ones_like(top_sim))
    sims = torch.zeros_like(votes).scatter_add_(1, y[top_idx], top_sim)
    # counts are integers; (sims + k) / (2k + 1) lies in [0, 1): it only breaks ties
    score = votes + (sims + k) / (2 * k + 1)
    return float((score.argmax(1) == y).to(torch.float64).mean())


def _single(name: str, fn: Callable[[Tensor, Tensor], float], *,
            logits: bool = False) -> Estimator:
    def run(features: Tensor, labels: Tensor, head: Tensor | None) -> dict[str, float]:
        if logits:
            if head is None:
                raise InputError(f"transfer estimator {name!r} needs the source head's logits")
            return {name: fn(head, labels)}
        return {name: fn(features, labels)}
    return run


def _ncti(features: Tensor, labels: Tensor, head: Tensor | None) -> dict[str, float]:
    return ncti_parts(features, labels)


# One entry per estimator name; the NCTI parts share one computation (GROUPS below).
REGISTRY: dict[str, Estimator] = {
    "logme": _single("logme", logme),
    "hscore": _single("hscore", hscore),
    "leep": _single("leep", leep, logits=True),
    "nce": _single("nce", nce, logits=True),
    "gbc": _single("gbc", gbc),
    "sfda": _single("sfda", sfda),
    "ncti_seli": _ncti,
    "ncti_ncc": _ncti,
    "ncti_vc": _ncti,
    "knn": _single("knn", knn_loo_accuracy),
}
assert set(REGISTRY) == set(ESTIMATORS), "the contract and the registry disagree"


def check_estimators(names: Sequence[str]) -> list[str]:
    """The names, checked against the contract's ESTIMATORS (one clear error otherwise)."""
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise InputError(f"evaluation.estimators: unknown {unknown}; known: {list(ESTIMATORS)}")
    return list(dict.fromkeys(names))


def _non_finite(name: str, users: list[str], values: Tensor) -> None:
    bad = ~torch.isfinite(values.detach())
    if bool(bad.any()):
        rows = int(bad.reshape(len(bad), -1).any(1).sum())
        raise InputError(f"transfer estimator(s) {users}: the {name} hold {int(bad.sum())} "
                         f"non-finite values (NaN or inf) in {rows} of {len(values)} target "
                         f"images; the estimators need finite {name} (did training diverge?)")


def check_finite(features: Tensor, labels: Tensor, logits: Tensor | None,
                 names: Sequence[str]) -> None:
    """One clear error, naming the estimators and the input, for input no estimator can use.

    Non-finite labels, features (for every estimator but LEEP and NCE) or logits (for LEEP and
    NCE) would otherwise give NaN silently or a misleading linear-algebra error; features
    that are the same for every image (zero variance) carry no class information, and
    several estimators would divide by their zero spread.

    Raises:
        InputError: naming the estimators that read the bad input, and what is wrong with it.
    """
    on_features = [n for n in names if n not in LOGIT_ESTIMATORS]
    on_logits = [n for n in names if n in LOGIT_ESTIMATORS]
    if labels.is_floating_point():
        _non_finite("labels", list(names), labels)
    if on_features:
        _non_finite("features", on_features, features)
        x = features.detach()
        if len(x) and bool((x == x[:1]).all()):
            raise InputError(f"transfer estimator(s) {on_features}: the features are the same "
                             f"for all {len(x)} target images (zero variance), so they carry "
                             f"no class information to measure")
    if on_logits and logits is not None:
        _non_finite("logits", on_logits, logits)


def transfer_metrics(features: Tensor, labels: Tensor, logits: Tensor | None = None,
                     names: Sequence[str] = ESTIMATORS) -> dict[str, float]:
    """{estimator: value} for each requested estimator on the target features.

    Args:
        features: (N, D) penultimate target features, as the evaluation extracted them.
        labels: (N,) target class labels (at least two classes, two images each).
        logits: (N, Z) source-head logits on the same images (LEEP and NCE need them).
        names: estimators to compute, from `analysis.contract.ESTIMATORS`.

    Raises:
        InputError: an unknown estimator, bad shapes, fewer than two classes of two images,
            missing logits for LEEP or NCE, or input they cannot use (`check_finite`).
    """
    names = check_estimators(names)
    if features.ndim != 2 or len(features) != len(labels):
        raise InputError(f"transfer estimators need (N, D) features and N labels, got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    check_finite(features, labels, logits, names)
    counts = torch.bincount(torch.unique(labels.cpu(), return_inverse=True)[1])
    if len(counts) < 2 or int(counts.min()) < 2:
        raise InputError("transfer estimators need at least two classes of two images each")
    out: dict[str, float] = {}
    for name in names:
        if name not in out:
            out.update(REGISTRY[name](features, labels, logits))
    for name in names:
        if not math.isfinite(out[name]):
            source = "logits" if name in LOGIT_ESTIMATORS else "features"
            raise InputError(f"transfer estimator {name!r} gave {out[name]} on these {source} "
                             f"(finite, not constant): a degenerate case it is not defined for")
    return {name: out[name] for name in names}
