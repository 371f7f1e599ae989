"""Collapse controls: training terms that induce or mitigate neural collapse on purpose.

Three knobs of `TrainingConfig`, each off by default (and then no code path below runs, so a
default trial trains exactly as before):

- `center_loss` (weight lambda_c >= 0) induces collapse: Wen, Zhang, Li & Qiao, "A Discriminative
  Feature Learning Approach for Deep Face Recognition", ECCV 2016, eq. (2):
  L_C = 1/2 * sum_i ||h_i - c_{y_i}||^2, here averaged over the batch (1/(2B) sum_i). The class
  centres c_j are *not* trained by the optimiser: they follow the paper's own update (eq. 4,
  Algorithm 1): after each step, c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - h_i) / (1 + n_j),
  with alpha = `CENTER_ALPHA` (0.5, the paper's default), on the detached features.
- `etf_head` (bool) induces collapse: the classifier is replaced by a fixed simplex equiangular
  tight frame and not trained (Zhu et al., NeurIPS 2021; Yang et al., NeurIPS 2022; used as the
  collapse-enforcing projector by Harun, Gallardo & Kanan, ICML 2025, arXiv 2502.10691):
  W^T = sqrt(C/(C-1)) * U (I_C - 1 1^T / C), U (D x C) with orthonormal columns. Because
  I - 11^T/C = V V^T with V (C x (C-1)) an orthonormal basis of the sum-zero vectors, we build
  W^T = sqrt(C/(C-1)) * U' V^T with U' (D x (C-1)) orthonormal: the same Gram matrix
  W W^T = C/(C-1) (I - 11^T/C) as the textbook form, and it needs only D >= C - 1.
  The classifier bias is set to 0 and frozen too.
- `feature_entropy` (weight lambda_e >= 0) mitigates collapse: Harun et al. 2025 mitigate
  collapse with an entropy regulariser on the encoder's features. We implement the
  Kozachenko-Leonenko nearest-neighbour estimate of the differential entropy of the
  L2-normalised features (the "KoLeo" regulariser of Sablayrolles, Douze, Schmid & Jegou,
  "Spreading vectors for similarity search", ICLR 2019), which is how we read their
  description (only their abstract was available to us when writing this; check against their
  released code before citing it as theirs):
  L_E = -1/B sum_i log(rho_i + eps), rho_i = min_{j != i} ||z_i - z_j||, z = h / ||h||,
  eps = `KOLEO_EPS`. Minimising L_E spreads the batch's features apart, within classes too.

The loss that trains the network is CE + lambda_c L_C + lambda_e L_E; `source/train_loss`
stays the cross-entropy alone (its divergence rule compares it with ln C), and the per-epoch
means of L_C and L_E (before their weights) are logged as `source/center_loss` and
`source/entropy_loss` when the control is on.
"""

from __future__ import annotations

import math

import torch
from torch import nn

CENTER_ALPHA = 0.5  # Wen et al.'s centre learning rate (their experiments use 0.5)
KOLEO_EPS = 1e-8  # keeps log finite when two features coincide


def etf_weight(num_classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """A simplex-ETF classifier weight (C, D): rows of equal norm 1, pairwise cosine -1/(C-1).

    W^T = sqrt(C/(C-1)) U' V^T (see the module docstring); U' is a seeded random orthonormal
    (D x (C-1)) matrix, V an orthonormal basis of the vectors summing to 0.

    Raises:
        ValueError: `dim < num_classes - 1` (no such frame exists) or fewer than 2 classes.
    """
    c = int(num_classes)
    if c < 2 or dim < c - 1:
        raise ValueError(f"training.etf_head: a simplex ETF of {c} classes needs a feature "
                         f"width of at least {c - 1} (got {dim})")
    gen = torch.Generator().manual_seed(int(seed))
    centring = torch.eye(c, dtype=torch.float64) - 1.0 / c
    eigval, eigvec = torch.linalg.eigh(centring)
    v = eigvec[:, eigval > 0.5]  # (C, C-1): the eigenvalue-1 space of I - 11^T/C
    u, _ = torch.linalg.qr(torch.randn(dim, c - 1, generator=gen, dtype=torch.float64))
    w_t = math.sqrt(c / (c - 1)) * u @ v.T  # (D, C)
    return w_t.T.contiguous().float()


def fix_etf_head(classifier: nn.Linear, seed: int = 0) -> None:
    """Overwrite `classifier` with a simplex ETF and a zero bias, both frozen (not trained)."""
    with torch.no_grad():
        classifier.weight.copy_(etf_weight(classifier.out_features, classifier.in_features,
                                           seed))
        if classifier.bias is not None:
            classifier.bias.zero_()
            classifier.bias.requires_grad_(False)
    classifier.weight.requires_grad_(False)


def center_loss(features: torch.Tensor, labels: torch.Tensor,
                centers: torch.Tensor) -> torch.Tensor:
    """Wen et al. (2016) eq. (2), batch mean: 1/(2B) sum_i ||h_i - c_{y_i}||^2.

    Args:
        features: (B, D) penultimate features h.
        labels: (B,) class indices y.
        centers: (C, D) class centres c (not differentiated: a buffer).
    """
    diff = features.float() - centers[labels].detach()
    return 0.5 * diff.pow(2).sum(1).mean()


@torch.no_grad()
def update_centers(centers: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                   alpha: float = CENTER_ALPHA) -> None:
    """Wen et al. (2016) eq. (4), in place: c_j -= alpha * sum_{y_i=j}(c_j - h_i) / (1 + n_j).

    Classes absent from the batch (n_j = 0) do not move.
    """
    feats = features.detach().float()
    count = torch.zeros(centers.shape[0], device=centers.device, dtype=centers.dtype)
    count.index_add_(0, labels, torch.ones_like(labels, dtype=centers.dtype))
    summed = torch.zeros_like(centers).index_add_(0, labels, feats.to(centers.dtype))
    delta = (count[:, None] * centers - summed) / (1.0 + count[:, None])
    centers.sub_(alpha * delta)


def koleo_entropy_loss(features: torch.Tensor, eps: float = KOLEO_EPS) -> torch.Tensor:
    """Sablayrolles et al. (2019) KoLeo: -1/B sum_i log(min_{j!=i} ||z_i - z_j|| + eps).

    z = h / ||h||. This is, up to constants, minus the Kozachenko-Leonenko estimate of the
    differential entropy of z, so minimising it raises the features' entropy.

    Raises:
        ValueError: a batch of fewer than 2 features (no nearest neighbour).
    """
    if features.shape[0] < 2:
        raise ValueError("the entropy regulariser needs at least 2 features per batch")
    z = nn.functional.normalize(features.float(), dim=1)
    dist = torch.cdist(z, z)
    dist = dist + torch.diag(torch.full((z.shape[0],), float("inf"), device=z.device))
    nearest = dist.min(dim=1).values
    return -torch.log(nearest + eps).mean()


class CollapseControls(nn.Module):
    """The state and terms of the on-switched controls for one trial (centres as a buffer).

    Attributes:
        center_weight, entropy_weight: lambda_c and lambda_e (0 = off).
        centers: (C, D) class centres, zeros at the start (Wen et al. initialise them so too).
    """

    centers: torch.Tensor

    def __init__(self, num_classes: int, dim: int, *, center_weight: float,
                 entropy_weight: float) -> None:
        super().__init__()
        self.center_weight = float(center_weight)
        self.entropy_weight = float(entropy_weight)
        self.register_buffer("centers", torch.zeros(num_classes, dim))

    @property
    def needs_features(self) -> bool:
        """Whether any term reads the penultimate features (else the plain forward runs)."""
        return self.center_weight > 0 or self.entropy_weight > 0

    def terms(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted terms that are on: {"center": L_C, "entropy": L_E}."""
        out: dict[str, torch.Tensor] = {}
        if self.center_weight > 0:
            out["center"] = center_loss(features, labels, self.centers)
        if self.entropy_weight > 0:
            out["entropy"] = koleo_entropy_loss(features)
        return out

    def weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """lambda_c L_C + lambda_e L_E over the terms that are on."""
        total = torch.zeros((), device=self.centers.device)
        if "center" in terms:
            total = total + self.center_weight * terms["center"]
        if "entropy" in terms:
            total = total + self.entropy_weight * terms["entropy"]
        return total

    def after_step(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """The centre update of Wen et al. (after the optimiser step, as in their Algorithm 1)."""
        if self.center_weight > 0:
            update_centers(self.centers, features, labels)
