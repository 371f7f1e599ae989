"""Inner products between the items of many episodes at once, without per-episode loops.

Every few-shot classifier here needs only inner products between (transformed) features: NCC
needs <query, sum of a way's support> and ||sum of a way's support||^2, the logistic probe needs
the support Gram matrix and query-support products. Two sources provide them:

- `GramKernel` computes the Gram matrix G = F F^T of the whole bank once (N^2 d flops) and then
  gathers entries: per 5-way 5-shot 15-query episode that is 75 x 25 numbers instead of a
  gathered (n, k + q, d) feature tensor, and no gathered E x n x k x d tensor ever exists.
- `FeatureKernel` gathers feature rows per chunk of episodes and multiplies them; it wins when the
  bank is so large (N^2 > the work of the episodes, or N^2 over memory) that a Gram matrix does
  not pay for itself.

`make_kernel` picks between them from the sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Largest Gram matrix built (entries): 2^26 is 256 MiB in float32, 512 MiB in float64.
GRAM_MAX_ELEMENTS = 1 << 26


class GramKernel:
    """Inner products read from the Gram matrix of the feature bank."""

    kind = "gram"

    def __init__(self, features: Tensor) -> None:
        self.num_items = int(features.shape[0])
        self.gram = features @ features.T
        # One column: embedding_bag over flat indices row * N + col is a fused gather-and-sum,
        # about twice as fast on CPU as indexing followed by a separate sum.
        self._flat = self.gram.reshape(-1, 1)
        # int32 indices halve the index traffic; flat indices stay below N^2 <= GRAM_MAX_ELEMENTS.
        self._index_dtype = torch.int32 if self.num_items**2 < 2**31 else torch.int64

    def _flat_index(self, rows: Tensor, cols: Tensor) -> Tensor:
        dt = self._index_dtype
        return rows.to(dt) * self.num_items + cols.to(dt)

    def inner(self, a: Tensor, b: Tensor) -> Tensor:
        """(B, A) and (B, C) row indices -> (B, A, C) inner products."""
        idx = self._flat_index(a[:, :, None], b[:, None, :])
        return self.gram.reshape(-1)[idx.long()]

    def cross_sum(self, a: Tensor, groups: Tensor) -> Tensor:
        """(B, A) and (B, G, k) -> (B, A, G): <x_a, sum of the k items of each group>."""
        bsz, num_a = a.shape
        _, num_g, k = groups.shape
        idx = self._flat_index(a[:, :, None, None], groups[:, None, :, :])
        out = F.embedding_bag(idx.reshape(-1, k), self._flat, mode="sum")
        return out.view(bsz, num_a, num_g)

    def group_sqnorm(self, groups: Tensor) -> Tensor:
        """(B, G, k) -> (B, G): squared norm of the sum of each group's k items."""
        bsz, num_g, k = groups.shape
        idx = self._flat_index(groups[..., :, None], groups[..., None, :])
        out = F.embedding_bag(idx.reshape(-1, k * k), self._flat, mode="sum")
        return out.view(bsz, num_g)


class FeatureKernel:
    """Inner products from feature rows gathered per chunk of episodes."""

    kind = "gather"

    def __init__(self, features: Tensor) -> None:
        self.num_items = int(features.shape[0])
        self.features = features

    def inner(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.bmm(self.features[a], self.features[b].transpose(1, 2))

    def cross_sum(self, a: Tensor, groups: Tensor) -> Tensor:
        sums = self.features[groups].sum(dim=2)  # (B, G, d)
        return torch.bmm(self.features[a], sums.transpose(1, 2))

    def group_sqnorm(self, groups: Tensor) -> Tensor:
        sums = self.features[groups].sum(dim=2)
        return (sums * sums).sum(dim=-1)


Kernel = GramKernel | FeatureKernel


def make_kernel(
    features: Tensor, *, episodes: int, n_way: int, k_shot: int, q_query: int, method: str | None
) -> Kernel:
    """The cheaper kernel source for evaluating `episodes` episodes on `features` (N, d).

    A Gram matrix costs N^2 d once; gathering costs about n (k + q + n q) d per episode (the
    rows, their sums and the query-prototype products). `method` ("gram" or "gather") overrides
    the choice, for tests and benchmarks.
    """
    if method is None:
        n = int(features.shape[0])
        per_episode = n_way * (k_shot + q_query + n_way * q_query)
        gram = n * n <= GRAM_MAX_ELEMENTS and n * n <= episodes * per_episode
        method = "gram" if gram else "gather"
    if method == "gram":
        return GramKernel(features)
    if method == "gather":
        return FeatureKernel(features)
    raise ValueError(f"method must be 'gram', 'gather' or None, got {method!r}")


def elements_per_episode(kernel: Kernel, n_way: int, k_shot: int, q_query: int, dim: int) -> int:
    """Largest temporary (in tensor elements) the kernel builds per episode, to size chunks."""
    items = n_way * (k_shot + q_query)
    if kernel.kind == "gram":
        return items * n_way * k_shot + n_way * k_shot * k_shot
    return items * dim
