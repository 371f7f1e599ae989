"""Transferability estimators that read the source head's predictions on target images.

LEEP (Nguyen et al., ICML 2020) and NCE (Tran et al., ICCV 2019). Both take the source
classifier's logits (N, Z) on the N target images and the target labels (N,); both ask how well
the source label z predicts the target label y through the empirical joint distribution of
(z, y) over the target set. Higher is better for both (both are <= 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from analysis.measure.transfer_linear import one_hot

_F64 = torch.float64


def _inputs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    theta = torch.softmax(logits.detach().to(dtype=_F64), dim=1)  # on the logits' device
    y = torch.unique(labels.detach().to(theta.device), return_inverse=True)[1]
    return theta, y


def leep(logits: Tensor, labels: Tensor) -> float:
    """LEEP: the log expected empirical prediction of a source head on the target set.

    Nguyen, Hassner, Seeger & Archambeau, "LEEP: A New Measure to Evaluate Transferability of
    Learned Representations", ICML 2020, eq. (1)-(2). With theta(x) = softmax(source logits):

        P(y, z) = (1/N) sum_{i: y_i = y} theta(x_i)_z,   P(y | z) = P(y, z) / sum_y' P(y', z),
        LEEP = (1/N) sum_i log( sum_z P(y_i | z) theta(x_i)_z ).

    (Some reimplementations, e.g. TencentARC/SFDA, drop the log; this follows the paper.)
    """
    theta, y = _inputs(logits, labels)
    joint = one_hot(y).T @ theta / len(y)  # (C, Z)
    cond = joint / joint.sum(0, keepdim=True).clamp_min(1e-300)
    eep = (theta * cond[y]).sum(1)  # sum_z P(y_i|z) theta_iz
    return float(eep.clamp_min(1e-300).log().mean())


def nce(logits: Tensor, labels: Tensor) -> float:
    """NCE: the negative conditional entropy of the target label given the source label.

    Tran, Nguyen & Hassner, "Transferability and Hardness of Supervised Classification
    Tasks", ICCV 2019. The source label of a target image is the head's hard prediction
    z_i = argmax_z theta(x_i)_z; with the empirical joint P(y, z) = #{i: y_i = y, z_i = z} / N,

        NCE = -H(Y | Z) = sum_{y, z} P(y, z) log( P(y, z) / P(z) )   (0 log 0 = 0).

    0 when the source label determines the target label; -log C when it says nothing.
    """
    theta, y = _inputs(logits, labels)
    z = theta.argmax(1)
    joint = torch.zeros(int(y.max()) + 1, theta.shape[1], dtype=_F64, device=theta.device)
    joint.index_put_((y, z), torch.ones(len(y), dtype=_F64, device=theta.device),
                     accumulate=True)
    joint /= len(y)
    pz = joint.sum(0, keepdim=True).expand_as(joint)
    nz = joint > 0
    return float((joint[nz] * (joint[nz] / pz[nz]).log()).sum())
