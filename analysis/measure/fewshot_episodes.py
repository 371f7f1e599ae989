"""Episode banks: n-way k-shot q-query episodes sampled once, as index tensors, from a seed.

A bank is drawn on the CPU with a `torch.Generator` seeded from `seed` and only then moved, so
the same (labels, shape, episodes, seed) give the same bank on every device and every run: all
trials of a study are compared on identical episodes. Episode i depends only on (labels, shape,
seed, i), so a bank of E episodes is the first E episodes of any larger one with the same seed.
`EpisodeBank.hash` names a bank in logs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor

from analysis.contract import format_shape
from analysis.errors import InputError

# Episodes drawn per call to the generator (bounds memory; does not change the bank).
_DRAW_CHUNK = 1024
_HASH_VERSION = "nctune-episodes-v1"


@dataclass(frozen=True, eq=False)
class EpisodeBank:
    """A fixed set of episodes, as int64 indices into the rows of a feature bank.

    Attributes:
        n_way: classes per episode.
        k_shot: support items per class.
        q_query: query items per class.
        seed: the seed the bank was drawn from.
        classes: (E, n_way) label value of each way.
        support: (E, n_way, k_shot) row indices of the support items, way by way.
        query: (E, n_way, q_query) row indices of the query items; query[e, w] belong to way w.
        num_items: length of the label vector the bank was drawn from (rows it indexes).
    """

    n_way: int
    k_shot: int
    q_query: int
    seed: int
    classes: Tensor
    support: Tensor
    query: Tensor
    num_items: int = field(default=-1)

    @property
    def episodes(self) -> int:
        """Number of episodes E."""
        return int(self.classes.shape[0])

    @property
    def shape(self) -> str:
        """The episode shape as used in metric names, e.g. "5w1s"."""
        return format_shape(self.n_way, self.k_shot)

    @property
    def device(self) -> torch.device:
        """The device the bank's index tensors live on."""
        return self.support.device

    @cached_property
    def hash(self) -> str:
        """12 hex digits of a SHA-256 of the shape, seed and index tensors (device-independent)."""
        h = hashlib.sha256()
        head = (_HASH_VERSION, self.n_way, self.k_shot, self.q_query, self.seed, self.num_items)
        h.update(repr(head).encode())
        for t in (self.classes, self.support, self.query):
            h.update(t.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
        return h.hexdigest()[:12]

    def to(self, device: str | torch.device) -> EpisodeBank:
        """The same bank with its index tensors on `device`."""
        return replace(
            self,
            classes=self.classes.to(device),
            support=self.support.to(device),
            query=self.query.to(device),
        )

    def head(self, episodes: int) -> EpisodeBank:
        """The first `episodes` episodes (a different bank, with its own hash)."""
        return replace(
            self,
            classes=self.classes[:episodes],
            support=self.support[:episodes],
            query=self.query[:episodes],
        )

    def __repr__(self) -> str:
        return (
            f"EpisodeBank({self.n_way}-way {self.k_shot}-shot {self.q_query}-query, "
            f"episodes={self.episodes}, seed={self.seed}, hash={self.hash})"
        )


def sample_episodes(
    labels: Tensor | np.ndarray | Any,
    *,
    n_way: int,
    k_shot: int,
    q_query: int,
    episodes: int,
    seed: int,
    device: str | torch.device | None = None,
) -> EpisodeBank:
    """Draw a bank of `episodes` n-way k-shot q-query episodes over the items labelled `labels`.

    Each episode takes `n_way` distinct classes uniformly at random, then for each class
    `k_shot + q_query` distinct items uniformly at random: the first `k_shot` are its support,
    the rest its queries (so support and query never share an item).

    Args:
        labels: (N,) integer class label of each item, values >= 0 (need not be contiguous).
        n_way: classes per episode, >= 2.
        k_shot: support items per class, >= 1.
        q_query: query items per class, >= 1.
        episodes: number of episodes, >= 1.
        seed: seeds the CPU generator the bank is drawn from.
        device: where the returned index tensors live (drawn on the CPU regardless).

    Raises:
        InputError: bad labels (not 1-D integers, negative), a bad count, more ways than classes,
            or a class holding fewer than k_shot + q_query items.
    """
    for name, value, minimum in (
        ("n_way", n_way, 2),
        ("k_shot", k_shot, 1),
        ("q_query", q_query, 1),
        ("episodes", episodes, 1),
    ):
        _check_int(name, value, minimum=minimum)
    _check_int("seed", seed, minimum=None)
    lab = _check_labels(labels)

    uniq, counts = torch.unique(lab, sorted=True, return_counts=True)
    num_classes = int(uniq.numel())
    if n_way > num_classes:
        raise InputError(
            f"n_way={n_way} but the labels hold only {num_classes} classes; "
            f"n_way must be at most {num_classes}"
        )
    need = k_shot + q_query
    short = (counts < need).nonzero().flatten()
    if short.numel():
        worst = short[counts[short].argmin()]
        raise InputError(
            f"an episode needs k_shot + q_query = {k_shot} + {q_query} = {need} items per class, "
            f"but {short.numel()} of {num_classes} classes have fewer (class "
            f"{int(uniq[worst])} has {int(counts[worst])}); lower k_shot or q_query"
        )

    # members[c, j]: row index of the j-th item of class c. A stable sort groups rows by class in
    # ascending label order, which is the row-major order of the `valid` slots.
    order = torch.argsort(lab, stable=True)
    max_count = int(counts.max())
    pos = torch.arange(max_count)
    valid = pos[None, :] < counts[:, None]
    members = torch.zeros(num_classes, max_count, dtype=torch.int64)
    members[valid] = order

    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    cls_parts, item_parts = [], []
    for start in range(0, episodes, _DRAW_CHUNK):
        size = min(_DRAW_CHUNK, episodes - start)
        # One row of uniforms per episode, consumed in episode order: episode i gets the same
        # numbers whatever the bank size, so a smaller bank is a prefix of a larger one.
        draw = torch.rand(size, num_classes + n_way * max_count, generator=gen)
        # A random permutation via argsort of uniform keys; ties (probability ~1e-7 per pair)
        # resolve by the stable sort, so even they are reproducible.
        cls = draw[:, :num_classes].argsort(dim=1, stable=True)[:, :n_way]
        keys = draw[:, num_classes:].reshape(size, n_way, max_count)
        keys = keys.masked_fill(~valid[cls], 2.0)  # slots past a class's count sort last
        slots = keys.argsort(dim=2, stable=True)[..., :need]
        cls_parts.append(cls)
        item_parts.append(torch.gather(members[cls], 2, slots))
    cls_idx = torch.cat(cls_parts)
    items = torch.cat(item_parts)
    bank = EpisodeBank(
        n_way=n_way,
        k_shot=k_shot,
        q_query=q_query,
        seed=int(seed),
        classes=uniq[cls_idx],
        support=items[..., :k_shot].contiguous(),
        query=items[..., k_shot:].contiguous(),
        num_items=int(lab.numel()),
    )
    return bank if device is None else bank.to(device)


def _check_int(name: str, value: Any, *, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")


def _check_labels(labels: Any) -> Tensor:
    lab = labels if isinstance(labels, Tensor) else torch.as_tensor(np.asarray(labels))
    if lab.dtype == torch.bool or lab.dtype.is_floating_point or lab.dtype.is_complex:
        raise InputError(f"labels must be integers, got dtype {lab.dtype}")
    if lab.dim() != 1:
        raise InputError(f"labels must be 1-D (one label per item), got shape {tuple(lab.shape)}")
    if lab.numel() == 0:
        raise InputError("labels is empty; an episode bank needs labelled items")
    lab = lab.detach().to("cpu", torch.int64)
    low = int(lab.min())
    if low < 0:
        bad = int((lab < 0).sum())
        raise InputError(
            f"labels out of range: {bad} labels are negative (smallest {low}); "
            "class labels must be integers >= 0"
        )
    return lab
