"""Few-shot transfer on a bank of features: n-way k-shot q-query episodes, evaluated batched.

    bank = sample_episodes(target_labels, n_way=5, k_shot=5, q_query=15, episodes=600, seed=0)
    res = evaluate_episodes(target_features, bank, "ncc", center=source_train_mean)
    res.mean, res.ci95                      # -> fewshot/5w5s/ncc/acc, fewshot/5w5s/ncc/ci95

Classifiers (`list_classifiers()`): "ncc" (nearest class centre on centred-then-L2 features,
SimpleShot's CL2N; needs `center`), "ncc_l2", "ncc_raw", "logreg" (RFS's logistic probe).
Episodes are evaluated in chunks sized to a fixed memory budget, from inner products only
(`analysis.measure.fewshot_kernels`); nothing loops over episodes in Python.
A query whose top score is
shared by t ways, its own among them, counts 1/t (`episode_accuracy`).

The bank is built by `analysis.measure.fewshot_episodes`, classifiers live in
`analysis.measure.fewshot_classifiers` and `analysis.measure.fewshot_logreg`;
this module is the public face.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

import analysis.measure.fewshot_logreg  # noqa: F401  (registers "logreg")
from analysis.contract import format_shape, parse_shape  # the contract's one parser
from analysis.errors import InputError
from analysis.measure.fewshot_classifiers import (
    FewShotClassifier,
    create_classifier,
    list_classifiers,
    register_classifier,
)
from analysis.measure.fewshot_episodes import EpisodeBank, sample_episodes
from analysis.measure.fewshot_kernels import make_kernel

__all__ = [
    "EpisodeBank",
    "FewShotClassifier",
    "FewShotResult",
    "create_classifier",
    "episode_accuracy",
    "evaluate_episodes",
    "format_shape",
    "list_classifiers",
    "parse_shape",
    "predict_episodes",
    "register_classifier",
    "sample_episodes",
]

@dataclass(frozen=True, eq=False)
class FewShotResult:
    """Accuracy of one classifier on a bank of episodes.

    Attributes:
        accuracies: (E,) float64 accuracy of each episode (on the CPU).
        mean: mean accuracy over episodes.
        ci95: 1.96 * std / sqrt(E), std over episodes with divisor E (as in SimpleShot).
    """

    accuracies: Tensor
    mean: float
    ci95: float

    @property
    def episodes(self) -> int:
        """Number of episodes evaluated."""
        return int(self.accuracies.numel())


def evaluate_episodes(
    features: Tensor,
    bank: EpisodeBank,
    classifier: str | FewShotClassifier,
    *,
    center: Tensor | None = None,
    max_episodes: int | None = None,
    method: str | None = None,
) -> FewShotResult:
    """Accuracy of `classifier` on every episode of `bank`, all episodes batched.

    Args:
        features: (N, d) floating features of the items the bank was drawn from (row i is the
            item labelled labels[i]); any device, the bank follows it.
        bank: episodes from `sample_episodes` on those N labels.
        classifier: a registered name (see `list_classifiers()`) or an instance.
        center: (d,) feature centre for "ncc" (e.g. the source-train mean); ignored by the
            classifiers that do not centre.
        max_episodes: evaluate only the first this many episodes (all when None or larger).
        method: "gram" or "gather" forces how inner products are computed (tests, benchmarks);
            None picks the cheaper (`analysis.measure.fewshot_kernels.make_kernel`).

    Raises:
        InputError: non-finite or misshapen features, a length that does not match the bank,
            a missing or bad centre, an unknown classifier, max_episodes < 1.
    """
    parts = [
        episode_accuracy(scores, bank.q_query)
        for scores in _chunk_scores(features, bank, classifier, center, max_episodes, method)
    ]
    acc = torch.cat(parts).cpu()
    std = float(acc.std(unbiased=False)) if acc.numel() > 1 else 0.0
    return FewShotResult(
        accuracies=acc, mean=float(acc.mean()), ci95=1.96 * std / math.sqrt(acc.numel())
    )


def predict_episodes(
    features: Tensor,
    bank: EpisodeBank,
    classifier: str | FewShotClassifier,
    *,
    center: Tensor | None = None,
    max_episodes: int | None = None,
    method: str | None = None,
) -> Tensor:
    """(E, n, q) predicted way of every query (first highest score); arguments as evaluate's."""
    parts = [
        scores.argmax(dim=1).view(-1, bank.n_way, bank.q_query)
        for scores in _chunk_scores(features, bank, classifier, center, max_episodes, method)
    ]
    return torch.cat(parts)


def _chunk_scores(
    features: Tensor,
    bank: EpisodeBank,
    classifier: str | FewShotClassifier,
    center: Tensor | None,
    max_episodes: int | None,
    method: str | None,
) -> Iterator[Tensor]:
    """Validate, transform the bank once, then yield (B, n, n q) way scores chunk by chunk."""
    clf = create_classifier(classifier) if isinstance(classifier, str) else classifier
    if not isinstance(bank, EpisodeBank):
        raise InputError(f"bank must be an EpisodeBank (from sample_episodes), got {type(bank)}")
    _check_features(features, bank)
    center_t = _check_center(center, features, clf)
    episodes = bank.episodes
    if max_episodes is not None:
        if isinstance(max_episodes, bool) or not isinstance(max_episodes, int) or max_episodes < 1:
            raise InputError(
                f"max_episodes must be a positive integer or None, got {max_episodes!r}"
            )
        episodes = min(episodes, max_episodes)

    dtype = clf.compute_dtype or (
        features.dtype if features.dtype in (torch.float32, torch.float64) else torch.float32
    )
    n, k, q = bank.n_way, bank.k_shot, bank.q_query
    with torch.no_grad():
        feats = clf.transform(
            features.detach().to(dtype),
            None if center_t is None else center_t.to(features.device, dtype),
        )
        costs = clf.kernel_costs(n, k, q, int(feats.shape[0]), int(feats.shape[1]))
        kernel = make_kernel(feats, episodes=episodes, costs=costs, method=method)
    per_episode = max(
        kernel.elements_per_episode(n, k, q, int(feats.shape[1])), clf.extra_elements(n, k, q)
    )
    chunk = max(1, kernel.chunk_elements // per_episode)
    support = bank.support.to(features.device)
    query = bank.query.to(features.device)
    for start in range(0, episodes, chunk):
        stop = min(start + chunk, episodes)
        with torch.no_grad():  # not held across the yield: it would leak into the caller
            scores = clf.scores(kernel, support[start:stop], query[start:stop])
        yield scores


def episode_accuracy(scores: Tensor, q_query: int) -> Tensor:
    """(B,) float64 accuracy of each episode from (B, n, n q) way scores (see `scores`).

    A query is right when its own way scores highest. Exact ties (t ways sharing the top score,
    the right one among them) earn 1/t, the expected credit of breaking the tie at random:
    deterministic, unbiased, and the same as argmax wherever there is no tie. An amax over
    ways, unlike an argmax over a dimension of size n, is one fast vectorised reduction.
    """
    bsz, n_way, num_q = scores.shape
    truth = torch.arange(n_way, device=scores.device).repeat_interleave(q_query)
    own = torch.gather(scores, 1, truth.expand(bsz, 1, num_q))[:, 0]  # (B, n q)
    top = scores.amax(dim=1)
    tied = torch.count_nonzero(scores == top[:, None, :], dim=1)
    credit = (own == top) / tied  # 0 or 1 unless tied
    return credit.sum(dim=1, dtype=torch.float64) / num_q


def _check_features(features: Tensor, bank: EpisodeBank) -> None:
    if not isinstance(features, Tensor):
        raise InputError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() != 2:
        raise InputError(f"features must be 2-D (N, d), got shape {tuple(features.shape)}")
    if not features.dtype.is_floating_point:
        raise InputError(f"features must be floating point, got dtype {features.dtype}")
    if features.shape[0] != bank.num_items:
        raise InputError(
            f"features has {features.shape[0]} rows but the episode bank was drawn from "
            f"{bank.num_items} labels; pass the features of exactly those items, in order"
        )
    finite = torch.isfinite(features)
    if not bool(finite.all()):
        bad = (~finite).nonzero()
        raise InputError(
            f"features contain {bad.shape[0]} non-finite values (NaN or inf), the first at "
            f"row {int(bad[0, 0])}, column {int(bad[0, 1])}"
        )


def _check_center(center: Tensor | None, features: Tensor, clf: FewShotClassifier) -> Tensor | None:
    if center is None:
        if clf.requires_center:
            raise InputError(
                f"classifier {clf.name!r} needs `center` (a (d,) feature centre such as the "
                "source-train mean); got None"
            )
        return None
    c = torch.as_tensor(center)
    if c.shape != (features.shape[1],):
        raise InputError(
            f"center must have shape ({features.shape[1]},) to match the features, "
            f"got {tuple(c.shape)}"
        )
    if not c.dtype.is_floating_point or not bool(torch.isfinite(c).all()):
        raise InputError("center must be a finite floating-point vector (no NaN or inf)")
    return c
