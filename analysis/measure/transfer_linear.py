"""Transferability estimators that fit a linear model of the labels on the features.

LogME (You et al., ICML 2021) and the shrinkage H-score (Bao et al., ICIP 2019; Ibrahim et al.,
ICLR 2022). Both take the target features (N, D) and labels (N,) of a trial's evaluation; both
are higher for features from which the labels are more linearly predictable. Computed in
float64 where the features are: on the CPU of a CPU trial, on the GPU of a GPU trial, where a
trial holds one CPU thread and the CPU's D x D eigendecompositions took most of an evaluation
(benchmarks/eval_breakdown.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_F64 = torch.float64
LOGME_ITERATIONS = 11  # the reference code's cap; it converges in 2-3 steps in practice
LOGME_TOL = 1e-3  # relative change of alpha / beta that counts as converged (reference value)
LOGME_EPS = 1e-5  # added to the squared norms in the fixed point, as in the reference


def as_f64(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Features as float64 (N, D) and labels as int64 codes 0..C-1, both on the features'
    device."""
    x = features.detach().to(dtype=_F64)
    y = torch.unique(labels.detach().to(x.device), return_inverse=True)[1]
    return x, y


def one_hot(y: Tensor) -> Tensor:
    """(N, C) float64 indicator matrix of integer codes 0..C-1."""
    return torch.nn.functional.one_hot(y, int(y.max()) + 1).to(_F64)


def _spectrum(x: Tensor) -> tuple[Tensor, Tensor]:
    """Left singular vectors U (N, k) and squared singular values (k,) of x, rank k only."""
    n, d = x.shape
    if n > d:  # eigendecomposition of the D x D Gram: cheaper than an N x D SVD
        evals, v = torch.linalg.eigh(x.T @ x)
        s = evals.clamp_min(0).sqrt()
        keep = s > 1e-10
        return (x @ v[:, keep]) / s[keep], evals[keep]
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    keep = s > 1e-10
    return u[:, keep], s[keep] ** 2


def logme(features: Tensor, labels: Tensor) -> float:
    """LogME: the average over classes of the log maximum evidence of a Bayesian linear model.

    You, Liu, Wang & Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
    Learning", ICML 2021; the fixed-point solver of You et al., "Ranking and Tuning Pre-trained
    Models", JMLR 2022 (arXiv 2110.10545), as in the authors' code (thuml/LogME, LogME.py).

    For each class c, y = 1[label = c] is modelled as y = F w + noise, w ~ N(0, alpha^-1 I),
    noise ~ N(0, beta^-1). With F = U diag(s) V^T, sigma = s^2, z = U^T y, t = alpha / beta:

        gamma = sum_i sigma_i / (sigma_i + t)
        |m|^2 = sum_i sigma_i z_i^2 / (sigma_i + t)^2,
        |y - F m|^2 = sum_i z_i^2 / (1 + sigma_i / t)^2 + (|y|^2 - |z|^2)
        alpha <- gamma / (|m|^2 + eps),  beta <- (N - gamma) / (|y - F m|^2 + eps)

    iterated (at most 11 times, until t changes by <= 1e-3 relatively), then

        L_c = [D/2 log alpha + N/2 log beta - 1/2 sum_i log(alpha + beta sigma_i)
               - beta/2 |y - F m|^2 - alpha/2 |m|^2 - N/2 log(2 pi)] / N

    with the squared norms of the last iteration, as the reference code does. LogME = mean_c L_c.
    All classes are iterated together; a class stops updating once it has converged.
    Higher is better. The log-determinant log|alpha I + beta F^T F| runs over all D eigenvalues,
    as in the paper (the zero ones add log alpha each); the reference code sums over the
    rank(F) nonzero ones only, which differs when N < D (never for the demo: N = 1200 > D).
    """
    x, y = as_f64(features, labels)
    n, d = x.shape
    u, sigma = _spectrum(x)
    yy = one_hot(y)
    z2 = (u.T @ yy) ** 2  # (k, C)
    rest = (yy ** 2).sum(0) - z2.sum(0)
    sig = sigma[:, None]
    alpha = torch.ones(yy.shape[1], dtype=_F64, device=yy.device)
    beta = torch.ones_like(alpha)
    m2 = torch.zeros_like(alpha)
    res2 = torch.zeros_like(alpha)
    active = torch.ones_like(alpha, dtype=torch.bool)
    for _ in range(LOGME_ITERATIONS):
        t = alpha / beta
        gamma = (sig / (sig + t)).sum(0)
        m2_new = (sig * z2 / (t + sig) ** 2).sum(0)
        res2_new = (z2 / (1 + sig / t) ** 2).sum(0) + rest
        alpha_new = gamma / (m2_new + LOGME_EPS)
        beta_new = (n - gamma) / (res2_new + LOGME_EPS)
        m2, res2 = torch.where(active, m2_new, m2), torch.where(active, res2_new, res2)
        alpha, beta = torch.where(active, alpha_new, alpha), torch.where(active, beta_new, beta)
        active &= (alpha / beta - t).abs() / t > LOGME_TOL
        if not active.any():
            break
    logdet = (alpha + beta * sig).log().sum(0) + (d - len(sigma)) * alpha.log()
    evidence = (d / 2 * alpha.log() + n / 2 * beta.log() - 0.5 * logdet
                - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi)) / n
    return float(evidence.mean())


def ledoit_wolf(xc: Tensor) -> tuple[Tensor, float]:
    """Ledoit-Wolf shrunk covariance of centred rows xc (N, D) and its shrinkage in [0, 1].

    Ledoit & Wolf, "A well-conditioned estimator for large-dimensional covariance matrices",
    J. Multivariate Anal. 2004, in the finite-sample form scikit-learn's `ledoit_wolf` uses
    (the test compares with it):

        S = xc^T xc / N,  mu = tr(S) / D,  delta = |S - mu I|_F^2 / D,
        b = (sum_n |x_n|^4 / N - |S|_F^2) / (D N),
        shrinkage = min(b, delta) / delta,  cov = (1 - shrinkage) S + shrinkage mu I.
    """
    n, d = xc.shape
    s = xc.T @ xc / n
    mu = torch.trace(s) / d
    x2 = xc ** 2
    beta_sum = (x2.T @ x2).sum() / n
    delta_sum = (s ** 2).sum()
    b = (beta_sum - delta_sum) / (d * n)
    delta = (delta_sum - 2 * mu * torch.trace(s) + d * mu ** 2) / d
    b = torch.minimum(b, delta)
    shrink = 0.0 if float(delta) == 0 else float(b / delta)
    cov = (1 - shrink) * s + shrink * mu * torch.eye(d, dtype=s.dtype, device=s.device)
    return cov, shrink


def hscore(features: Tensor, labels: Tensor) -> float:
    """H-score with Ledoit-Wolf shrinkage of the feature covariance.

    Bao, Li, Huang, Zheng & Tong, "An Information-Theoretic Approach to Transferability in Task
    Transfer Learning", ICIP 2019:  H = tr(cov(f)^-1 cov(E[f | y])).
    Shrinkage version of Ibrahim, Ponomareva & Mazumder, "Newer is not always better:
    Rethinking transferability metrics, their peculiarities, stability and performance",
    ICLR 2022 (the raw cov(f)^-1 is unstable when D is close to N):

        H_alpha = tr( cov_alpha(f)^+ (1 - alpha) cov(E[f | y]) )

    with cov_alpha the Ledoit-Wolf estimate of the centred features and alpha its shrinkage;
    cov(E[f | y]) is the (unbiased, 1/(N-1)) covariance of each sample replaced by its class
    mean. Higher is better; at most the number of classes minus one (the rank of cov(E[f|y])
    bounds it when alpha = 0).
    """
    x, y = as_f64(features, labels)
    xc = x - x.mean(0)
    cov, alpha = ledoit_wolf(xc)
    counts = torch.bincount(y).to(_F64)
    means = (one_hot(y).T @ xc) / counts[:, None]
    g = means[y]
    cov_g = (g - g.mean(0)).T @ (g - g.mean(0)) / (len(g) - 1)
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) == 0:  # positive definite (always when alpha > 0): a solve, not a pseudo-inverse
        solved = torch.cholesky_solve(cov_g, chol)
    else:
        solved = torch.linalg.pinv(cov, hermitian=True) @ cov_g
    return float((1 - alpha) * torch.trace(solved))
