"""Inner products between the items of many episodes at once, without per-episode loops.

Every few-shot classifier here needs only inner products between (transformed) features: NCC
needs <query, S_w> and ||S_w||^2 with S_w the sum of way w's support, the logistic probe needs
the support Gram matrix and query-support products. Two sources provide them:

- `GramKernel` computes the Gram matrix G = F F^T of the bank once (N^2 d flops). Summing the k
  Gram rows of a way's support gives <x, S_w> for every item x at once (`embedding_bag`, a
  vectorised gather-and-add of contiguous rows); the queries' and supports' entries are then
  picked out. No gathered E x n x k x d tensor exists, and per 5-way 5-shot episode the work is
  25 row reads of length N instead of 100 feature reads of length d plus the products.
- `FeatureKernel` gathers feature rows per chunk of episodes and multiplies them; it wins when
  the bank is so large (N^2 above the work of the episodes, or above memory) that a Gram
  matrix does not pay for itself.

`make_kernel` picks between them from the sizes and the classifier's per-episode costs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Largest Gram matrix built (entries): 2^26 is 256 MiB in float32, 512 MiB in float64.
GRAM_MAX_ELEMENTS = 1 << 26
# A gathered feature entry costs about this many multiply-adds (a copy out of cache or memory,
# against a blocked matmul): per-element times measured 3-8x apart on this CPU.
GATHER_WEIGHT = 8


class GramKernel:
    """Inner products read from the Gram matrix of the feature bank."""

    kind = "gram"
    # Temporaries per chunk: small enough that the summed rows stay in cache (measured fastest
    # around 2^20 on CPU), large enough to amortise per-operation overhead.
    chunk_elements = 1 << 20

    def __init__(self, features: Tensor) -> None:
        self.num_items = int(features.shape[0])
        self.gram = features @ features.T

    def inner(self, a: Tensor, b: Tensor) -> Tensor:
        """(B, A) and (B, C) row indices -> (B, A, C) inner products."""
        return self.gram.reshape(-1)[a[:, :, None] * self.num_items + b[:, None, :]]

    def group_products(self, a: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
        """<x_a, S_g> as (B, G, A) and ||S_g||^2 as (B, G), S_g the sum of group g's k items.

        Args:
            a: (B, A) row indices.
            groups: (B, G, k) row indices.
        """
        bsz, num_g, k = groups.shape
        # rows[b, g] = sum of the Gram rows of the group = <x, S_g> for every item x.
        rows = F.embedding_bag(groups.reshape(-1, k), self.gram, mode="sum")
        rows = rows.view(bsz, num_g, self.num_items)
        cross = torch.gather(rows, 2, a[:, None, :].expand(bsz, num_g, a.shape[1]))
        sqnorm = torch.gather(rows, 2, groups).sum(dim=2)
        return cross, sqnorm

    def elements_per_episode(self, n_way: int, k_shot: int, q_query: int, dim: int) -> int:
        """Temporary elements one episode needs: its Gram rows plus the (n, n q) score block (sizes
        chunks)."""
        return n_way * self.num_items + n_way * n_way * q_query


class FeatureKernel:
    """Inner products from feature rows gathered per chunk of episodes."""

    kind = "gather"
    chunk_elements = 1 << 24  # bounds memory (64 MiB in float32); overhead dominates below

    def __init__(self, features: Tensor) -> None:
        self.num_items = int(features.shape[0])
        self.features = features

    def inner(self, a: Tensor, b: Tensor) -> Tensor:
        """Batched inner products between the feature rows indexed by `a` and by `b`."""
        return torch.bmm(self.features[a], self.features[b].transpose(1, 2))

    def group_products(self, a: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
        """Per group, the sum of its feature rows, its inner products with rows `a`, and its squared
        norm."""
        sums = self.features[groups].sum(dim=2)  # (B, G, d)
        cross = torch.bmm(sums, self.features[a].transpose(1, 2))
        return cross, (sums * sums).sum(dim=-1)

    def elements_per_episode(self, n_way: int, k_shot: int, q_query: int, dim: int) -> int:
        """Temporary elements one episode needs: its gathered features plus the score block (sizes
        chunks)."""
        return n_way * (k_shot + q_query) * dim + n_way * n_way * q_query


Kernel = GramKernel | FeatureKernel


def make_kernel(
    features: Tensor, *, episodes: int, costs: tuple[int, int], method: str | None
) -> Kernel:
    """The cheaper kernel source for evaluating `episodes` episodes on `features` (N, d).

    Args:
        features: (N, d) transformed features.
        episodes: how many episodes will be evaluated.
        costs: per-episode work with gathered features and with a Gram matrix, in
            multiply-add units (`FewShotClassifier.kernel_costs`); the Gram matrix itself
            costs N^2 d once.
        method: "gram" or "gather" overrides the choice (tests, benchmarks).
    """
    if method is None:
        n, d = int(features.shape[0]), int(features.shape[1])
        gather_cost, gram_cost = costs
        fits = n * n <= GRAM_MAX_ELEMENTS
        method = (
            "gram"
            if fits and n * n * d + episodes * gram_cost <= episodes * gather_cost
            else "gather"
        )
    if method == "gram":
        return GramKernel(features)
    if method == "gather":
        return FeatureKernel(features)
    raise ValueError(f"method must be 'gram', 'gather' or None, got {method!r}")
