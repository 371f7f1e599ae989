"""Transferability estimators built on Gaussian class models of the target features.

GBC (Pandy et al., CVPR 2022), SFDA (Shao et al., ECCV 2022) and NCTI's three parts (Wang et
al., ICCV 2023). SFDA and NCTI share one regularised linear discriminant analysis (`lda`),
written here in torch because the measurement package does not depend on scikit-learn; the
tests compare it with scikit-learn's LinearDiscriminantAnalysis(solver="eigen"), and `lda_svd`
(NCTI's solver when its shrinkage is at the floor) with solver="svd".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from analysis.errors import InputError
from analysis.measure.transfer_linear import as_f64, one_hot

_F64 = torch.float64
GBC_DIMS = 64  # the GBC and NCTI papers' PCA width
NCTI_TOP = 32  # NCTI's shrinkage reads the variance of the top 32 principal components
SHRINK_FLOOR = 1e-10
GBC_VAR_FLOOR = 1e-4  # the GBC authors' absolute floor on each per-dimension class variance
COLLAPSED_RATIO = 1e-10  # within / total scatter below which NCTI has nothing to whiten by
SVD_TOL = 1e-4  # scikit-learn's LinearDiscriminantAnalysis tol (rank cut of the svd solver)


def pca(x: Tensor, dims: int) -> tuple[Tensor, Tensor]:
    """The centred rows of x projected on their top `dims` principal axes, and the variances
    (1/(N-1), as scikit-learn's explained_variance_) of those axes, largest first."""
    xc = x - x.mean(0)
    k = min(dims, *xc.shape)
    # eigh of the D x D scatter: cheaper than an SVD of the N x D rows when N > D
    evals, evecs = torch.linalg.eigh(xc.T @ xc)
    top = torch.argsort(evals, descending=True)[:k]
    return xc @ evecs[:, top], evals[top].clamp_min(0) / (len(x) - 1)


def class_moments(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Priors (C,), means (C, D) and biased per-dimension variances (C, D) of each class."""
    h = one_hot(y)
    counts = h.sum(0)
    means = h.T @ x / counts[:, None]
    var = h.T @ (x ** 2) / counts[:, None] - means ** 2
    return counts / len(y), means, var.clamp_min(0)


def gbc(features: Tensor, labels: Tensor, *, dims: int = GBC_DIMS,
        gaussian: str = "spherical") -> float:
    """GBC: minus the summed Bhattacharyya coefficients between the target classes.

    Pandy, Agostinelli, Uijlings, Ferrari & Mensink, "Transferability Estimation using
    Bhattacharyya Class Separability", CVPR 2022, as in the authors' released code
    (google-research, stable_transfer/transferability/gbc.py; spherical is its default).
    Features are reduced by PCA to min(64, D, N) dimensions; v_c = the per-dimension biased
    variances of class c, each floored at the absolute GBC_VAR_FLOOR = 1e-4 (the authors'
    tf.maximum(variance, 1e-4)). Spherical (default): class c is N(mu_c, s_c I) with
    s_c = mean_k v_ck, and for classes i != j with s = (s_i + s_j) / 2

        D_B(i, j) = ||mu_i - mu_j||^2 / (8 s) + 1/2 log( s / sqrt(s_i s_j) )

    (the log term once, not summed over dimensions: the authors' reduce_sum of a scalar).
    Diagonal (`gaussian="diagonal"`, the paper's other variant): N(mu_c, diag(v_c)),
        D_B(i, j) = 1/8 sum_k (mu_ik - mu_jk)^2 / v_k + 1/2 sum_k log( v_k / sqrt(v_ik v_jk) ),
    v = (v_i + v_j) / 2. Then GBC = - sum_{i != j} exp(-D_B(i, j)) (ordered pairs). 0 when the
    classes do not overlap, -C (C - 1) when they coincide. Higher is better.

    Raises:
        InputError: `gaussian` not "spherical" or "diagonal".
    """
    if gaussian not in ("spherical", "diagonal"):
        raise InputError(f"gbc: gaussian must be 'spherical' or 'diagonal', got {gaussian!r}")
    x, y = as_f64(features, labels)
    z, _ = pca(x, dims)
    _, mu, var = class_moments(z, y)
    var = var.clamp_min(GBC_VAR_FLOOR)
    if gaussian == "spherical":
        var = var.mean(1, keepdim=True)
    logv = var.log()
    total = 0.0
    for start in range(0, len(mu), 64):  # blocks of classes: C x C x dims at most 64 rows deep
        blk = slice(start, start + 64)
        v = (var[blk, None, :] + var[None, :, :]) / 2
        diff2 = (mu[blk, None, :] - mu[None, :, :]) ** 2
        db = (diff2 / v).sum(-1) / 8 + 0.5 * (v.log() - (logv[blk, None, :] + logv[None, :, :])
                                              / 2).sum(-1)
        bc = torch.exp(-db)
        rows = torch.arange(start, start + len(bc), device=bc.device)
        bc[rows - start, rows] = 0.0  # i = j is no pair
        total += float(bc.sum())
    return -total


def _shrunk(s: Tensor, shrinkage: float) -> Tensor:
    d = s.shape[0]
    eye = torch.eye(d, dtype=s.dtype, device=s.device)
    return (1 - shrinkage) * s + shrinkage * torch.trace(s) / d * eye


def _cov(x: Tensor) -> Tensor:
    xc = x - x.mean(0)
    return xc.T @ xc / len(x)


def within_scatter(x: Tensor, y: Tensor) -> Tensor:
    """S_w = sum_c p_c cov_c, biased class covariances weighted by class frequency."""
    h = one_hot(y)
    means = h.T @ x / h.sum(0)[:, None]
    r = x - means[y]
    return r.T @ r / len(x)


def _cholesky(s: Tensor) -> Tensor:
    """Cholesky factor of s; where s is singular to working precision (fewer images than
    dimensions with shrinkage at its floor), a ridge of 1e-10, 1e-8, ... of tr(s)/D is added."""
    chol, info = torch.linalg.cholesky_ex(s)
    ridge = 1e-10 * float(torch.trace(s)) / len(s)
    while int(info) != 0 and ridge < float(torch.trace(s)):
        eye = torch.eye(len(s), dtype=s.dtype, device=s.device)
        chol, info = torch.linalg.cholesky_ex(s + ridge * eye)
        ridge *= 100
    return chol


@dataclass(frozen=True)
class LDA:
    """A fitted regularised LDA: class scores, posteriors and the discriminant projection."""

    coef: Tensor  # (C, D): means S_w^-1
    intercept: Tensor  # (C,)
    chol: Tensor  # Cholesky factor of the shrunk S_w
    sb: Tensor  # S_b = S_t(s) - S_w(s)

    def proba(self, x: Tensor) -> Tensor:
        """p(c | x) = softmax_c( x . coef_c + intercept_c )."""
        return torch.softmax(x @ self.coef.T + self.intercept, dim=1)

    def transform(self, x: Tensor, components: int) -> Tensor:
        """x in the first `components` discriminant directions (scikit-learn's eigen solver):
        the generalised eigenvectors V of S_b V = S_w V Lambda, V^T S_w V = I, largest first."""
        eye = torch.eye(len(self.chol), dtype=_F64, device=self.chol.device)
        inv_l = torch.linalg.solve_triangular(self.chol, eye, upper=False)
        evals, u = torch.linalg.eigh(inv_l @ self.sb @ inv_l.T)
        scalings = (inv_l.T @ u)[:, torch.argsort(evals, descending=True)]
        return x @ scalings[:, :components]


def lda(x: Tensor, y: Tensor, shrinkage: float) -> LDA:
    """Linear discriminant analysis with covariance shrinkage, scikit-learn's eigen solver.

    S_w(s) = (1 - s) S_w + s tr(S_w)/D I,  S_t(s) = the same of the total covariance,
    S_b = S_t(s) - S_w(s); the scalings V solve S_b V = S_w(s) V Lambda with V^T S_w(s) V = I
    (descending Lambda; computed on demand by `LDA.transform`); coef = M V V^T = M S_w(s)^-1
    for class means M; intercept_c = -1/2 mu_c . coef_c + log p_c.
    """
    priors, means, _ = class_moments(x, y)
    sw = _shrunk(within_scatter(x, y), shrinkage)
    sb = _shrunk(_cov(x), shrinkage) - sw
    chol = _cholesky(sw)
    coef = torch.cholesky_solve(means.T, chol).T
    intercept = -0.5 * (means * coef).sum(1) + priors.log()
    return LDA(coef, intercept, chol, sb)


@dataclass(frozen=True)
class SvdLDA:
    """A fitted LDA from scikit-learn's svd solver (no shrinkage): scores and projection."""

    coef: Tensor  # (C, D)
    intercept: Tensor  # (C,)
    scalings: Tensor  # (D, r): the discriminant directions, r <= C - 1
    xbar: Tensor  # (D,): the prior-weighted mean of the class means

    def proba(self, x: Tensor) -> Tensor:
        """p(c | x) = softmax_c( x . coef_c + intercept_c )."""
        return torch.softmax(x @ self.coef.T + self.intercept, dim=1)

    def transform(self, x: Tensor, components: int) -> Tensor:
        """(x - xbar) in the first `components` discriminant directions."""
        return ((x - self.xbar) @ self.scalings)[:, :components]


def lda_svd(x: Tensor, y: Tensor) -> SvdLDA:
    """Linear discriminant analysis by scikit-learn's svd solver (version 1.9's _solve_svd).

    R = the rows minus their class means, each column divided by its standard deviation s
    (1 where 0), times 1/sqrt(N); R = U S V^T and only directions with S > SVD_TOL are kept:
    W = (V_r / s) / S_r whitens the within-class scatter on the span the data cover and drops
    the rest (so with N - C < D it stays finite, where inverting a floor-shrunk S_w does not).
    The class means M, centred on xbar = priors . M and weighted by sqrt(N p_c / (C - 1)), are
    mapped by W and decomposed again; the scalings are W times their right singular vectors
    with singular value > SVD_TOL times the largest. coef = (M - xbar) A A^T,
    intercept_c = -1/2 ||(mu_c - xbar) A||^2 + log p_c - xbar . coef_c.
    """
    priors, means, _ = class_moments(x, y)
    n, classes = len(x), len(means)
    r = x - means[y]
    std = r.std(0, correction=0)
    std = torch.where(std == 0, torch.ones_like(std), std)
    _, sv, vt = torch.linalg.svd(r / std / math.sqrt(n), full_matrices=False)
    rank = int((sv > SVD_TOL).sum())
    within = (vt[:rank] / std).T / sv[:rank]
    xbar = priors @ means
    centred = (means - xbar) * torch.sqrt(n * priors / max(classes - 1, 1))[:, None]
    _, sb, vbt = torch.linalg.svd(centred @ within, full_matrices=False)
    keep = int((sb > SVD_TOL * sb[0]).sum()) if len(sb) else 0
    scalings = within @ vbt.T[:, :keep]
    low = (means - xbar) @ scalings
    coef = low @ scalings.T
    intercept = -0.5 * (low ** 2).sum(1) + priors.log() - xbar @ coef.T
    return SvdLDA(coef, intercept, scalings, xbar)


def sfda(features: Tensor, labels: Tensor) -> float:
    """SFDA: self-challenging Fisher discriminant analysis.

    Shao, Zhao, Ge, Li, Zhou & Luo, "Not All Models Are Equal: Predicting Model Transferability
    in a Self-challenging Fisher Space", ECCV 2022 (checked against TencentARC/SFDA,
    metrics.py). Steps:
      1. regularised LDA with shrinkage s = max(exp(-5 lambda_max(S_w)), 1e-10) (the largest
         eigenvalue exactly; the reference estimates it with 3 power iterations);
      2. p = softmax(softmax(scores)) (the reference's "softened" posterior);
      3. ConfMix: each x of class y moves towards the mean of the other classes' means,
         x <- p_y(x) x + (1 - p_y(x)) (sum_{c != y} mu_c) / (C - 1);
      4. LDA again on the mixed features with the same s;
         SFDA = (1/N) sum_i p(y_i | x_i) (no log, as in the reference).
    Higher is better; in (0, 1].
    """
    x, y = as_f64(features, labels)
    lam = float(torch.linalg.eigvalsh(within_scatter(x, y))[-1])
    shrinkage = max(math.exp(-5 * lam), SHRINK_FLOOR)
    first = lda(x, y, shrinkage)
    p = torch.softmax(first.proba(x), dim=1)
    _, means, _ = class_moments(x, y)
    others = (means.sum(0) - means) / (len(means) - 1)
    py = p.gather(1, y[:, None])
    mixed = py * x + (1 - py) * others[y]
    second = lda(mixed, y, shrinkage)
    return float(second.proba(mixed).gather(1, y[:, None]).mean())


def ncti_parts(features: Tensor, labels: Tensor) -> dict[str, float]:
    """NCTI's three per-model parts: S_seli, S_ncc and S_vc.

    Wang, Luo, Zheng, Huang & Baktashmotlagh, "How Far Pre-trained Models Are from Neural
    Collapse on the Target Dataset Informs their Transferability", ICCV 2023 (checked against
    the authors' BUserName/NCTI, metrics.py). Features are reduced by PCA to min(64, D, N)
    dimensions; a regularised LDA with shrinkage s = max(exp(-sum of the top-32 principal
    variances), 1e-10) is fitted; Z = its (C-1)-dimensional projection, centred; P = its
    posteriors (N, C). Then

        S_seli = ||Z||_*                         (nuclear norm; higher better)
        S_ncc  = (1/N) sum_i P[i, y_i]           (higher better)
        S_vc   = log sum_c ||P_c||_*             (P_c: rows of class c; lower better)

    NCTI itself = minmax(S_seli) + minmax(S_ncc) - minmax(S_vc) across a pool of models, so it
    is formed across trials by the study analysis, not here. Where s hits its floor 1e-10 the
    authors switch to scikit-learn's svd solver (no shrinkage; `lda_svd`) for all three parts,
    and so does this function: with fewer images than PCA dimensions (N - C < 64) the
    within-class scatter is singular, and the eigen solver at the floor would scale the
    uncovered directions by about 1/sqrt(1e-10 tr(S_w)/D) (values of 1e6-1e7 where the svd
    solver gives hundreds); the svd solver drops those directions instead.

    Raises:
        InputError: the features are collapsed onto their class means to rounding (within-class
            scatter <= COLLAPSED_RATIO of the total): both solvers then whiten by a zero
            scatter and S_seli is rounding noise times 1e16 (the authors' code included).
    """
    x, y = as_f64(features, labels)
    z, variances = pca(x, GBC_DIMS)
    within, total = float(torch.trace(within_scatter(z, y))), float(torch.trace(_cov(z)))
    if within <= COLLAPSED_RATIO * total:
        raise InputError(f"NCTI (ncti_seli, ncti_ncc, ncti_vc): the features sit on their "
                         f"class means to rounding (within-class scatter {within:.3g} of total "
                         f"{total:.3g}); NCTI whitens by that scatter, so its parts are "
                         f"undefined (the authors' code gives rounding noise times 1e16)")
    shrinkage = max(math.exp(-float(variances[:NCTI_TOP].sum())), SHRINK_FLOOR)
    model: LDA | SvdLDA = lda_svd(z, y) if shrinkage <= SHRINK_FLOOR else lda(z, y, shrinkage)
    classes = int(y.max()) + 1
    low = model.transform(z, min(classes - 1, z.shape[1]))
    low = low - low.mean(0)
    p = model.proba(z)
    per_class = sum(float(torch.linalg.matrix_norm(p[y == c], ord="nuc"))
                    for c in range(classes))
    return {"ncti_seli": float(torch.linalg.matrix_norm(low, ord="nuc")),
            "ncti_ncc": float(p.gather(1, y[:, None]).mean()),
            "ncti_vc": math.log(per_class)}
