"""Few-shot transfer on a bank of features: n-way k-shot q-query episodes, evaluated batched.

    bank = sample_episodes(target_labels, n_way=5, k_shot=5, q_query=15, episodes=600, seed=0)
    res = evaluate_episodes(target_features, bank, "ncc", center=source_train_mean)
    res.mean, res.ci95                      # -> fewshot/5w5s/ncc/acc, fewshot/5w5s/ncc/ci95
    ncc_error_bound(cdnv_target, 5, 5)      # -> bound/5w5s

Classifiers (`list_classifiers()`): "ncc" (nearest class centre on centred-then-L2 features,
SimpleShot's CL2N; needs `center`), "ncc_l2", "ncc_raw", "logreg" (RFS's logistic probe).
Episodes are evaluated in chunks sized to a fixed memory budget, from inner products only
(`analysis.fewshot_kernels`); nothing loops over episodes in Python. A query whose top score is
shared by t ways, its own among them, counts 1/t (`episode_accuracy`).

The bank is built by `analysis.fewshot_episodes`, classifiers live in
`analysis.fewshot_classifiers` and `analysis.fewshot_logreg`; this module is the public face.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

import analysis.fewshot_logreg  # noqa: F401  (registers "logreg")
from analysis.errors import InputError
from analysis.fewshot_classifiers import (
    FewShotClassifier,
    create_classifier,
    list_classifiers,
    register_classifier,
)
from analysis.fewshot_episodes import EpisodeBank, format_shape, parse_shape, sample_episodes
from analysis.fewshot_kernels import make_kernel

__all__ = [
    "BOUND_CONSTANT",
    "EpisodeBank",
    "FewShotClassifier",
    "FewShotResult",
    "create_classifier",
    "episode_accuracy",
    "evaluate_episodes",
    "format_shape",
    "list_classifiers",
    "ncc_error_bound",
    "parse_shape",
    "predict_episodes",
    "register_classifier",
    "sample_episodes",
]

# The constant c in  E[NCC error] <= c (n - 1) (1 + 1/k) CDNV  (see ncc_error_bound).
BOUND_CONSTANT = 8.0


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
            None picks the cheaper (`analysis.fewshot_kernels.make_kernel`).

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


def ncc_error_bound(cdnv: float, n_way: int, k_shot: int) -> float:
    """Upper bound on the expected error of n-way k-shot nearest-class-centre classification.

        E[error] <= 8 (n - 1) (1 + 1/k) CDNV,
        CDNV = Avg_{i<j} (Var_i + Var_j) / (2 ||mu_i - mu_j||^2)

    over the classes episodes are drawn from (the paper's CDNV: biased 1/N_c variances of the
    features the classifier sees; `cdnv/target` for "ncc_raw" on the target split). Values
    >= 1 are vacuous; the bound is returned unclipped so that it stays comparable across runs.

    Source. Galanti, György & Hutter, "On the Role of Neural Collapse in Transfer Learning"
    (ICLR 2022, arXiv 2112.15121) bound the expected few-shot error of the nearest-class-centre
    classifier h_{f,S}(x) = argmin_c ||f(x) - mu_f(S_c)|| on new classes by the CDNV. We could
    not obtain that paper's text, so its proposition (number and constant) is NOT quoted here.
    What we could read is the first author's summary of the journal version (arXiv 2212.12532;
    blog "Why Pretrained Classifiers Work So Well in Few-Shot Learning", dlfundamentals.github.io,
    2026-03-11): per pair of classes the NCC loss is <~ (1 + 1/n) V_f(Q_i, Q_j) + (1/n)
    V_f(Q_j, Q_i), with V_f(Q_i, Q_j) = Var_f(Q_i) / ||mu_i - mu_j||^2, and a union bound over
    the k - 1 wrong classes gives the leading term (k - 1) Avg_{i != j} V_f, constants
    suppressed (their k, n are our n_way, k_shot). The statement below has that shape, with
    its constant proved; the pairwise step reads 8 (1 + 1/(2k)) V_ij + (4/k) V_ji in their
    asymmetric V.

    Statement. Let an n-way k-shot episode draw n distinct classes uniformly from a pool, then
    k support items and a query item of each class uniformly (with or without replacement;
    supports and queries may be disjoint). Let mu_c and Var_c = E||f(x) - mu_c||^2 be the mean
    and variance of class c over its items, and CDNV the average over the pool's class pairs.
    Then the expected NCC error (ties counted as errors) is at most 8 (n - 1)(1 + 1/k) CDNV.
    This covers the setting of the summary above (new classes drawn from a population, n
    samples per class), here for the finite pool the episodes come from.

    Proof. Fix ways i != j; write x = mu_i + z for a query of way i, m_i = mu_i + a and
    m_j = mu_j + b for the support means, D = mu_i - mu_j. Misclassifying x as j requires
    ||x - m_j|| <= ||x - m_i||, hence by the triangle inequality
    ||D|| <= ||x - m_j|| + ||x - m_i|| <= 2||z|| + ||a|| + ||b||. By Markov's inequality and
    (2u + v + w)^2 <= 4 (2u^2 + v^2 + w^2),
        P(x -> j) <= 4 (2 Var_i + Var_i / k + Var_j / k) / ||D||^2,
    using E||z||^2 = Var_i and E||a||^2 <= Var_i / k (sampling without replacement only lowers
    it); no independence is needed. A union bound over j != i, the average over i, and
    sum_{i != j} Var_i / ||D_ij||^2 = sum_{i<j} 2 V_ij give 8 (n - 1)(1 + 1/k) Avg_{i<j} V_ij
    for the episode's classes; averaging over uniformly drawn classes gives the pool's CDNV.

    Args:
        cdnv: average pairwise CDNV of the class pool, >= 0 (inf gives inf).
        n_way: ways n >= 2.
        k_shot: shots k >= 1.

    Raises:
        InputError: cdnv negative or NaN, n_way < 2 or k_shot < 1.
    """
    value = float(cdnv)
    if math.isnan(value) or value < 0:
        raise InputError(f"cdnv must be a number >= 0, got {cdnv!r}")
    for name, v, low in (("n_way", n_way, 2), ("k_shot", k_shot, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise InputError(f"{name} must be an integer >= {low}, got {v!r}")
    return BOUND_CONSTANT * (n_way - 1) * (1.0 + 1.0 / k_shot) * value


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
