"""Upper bounds on the few-shot error of nearest-class-centre classification.

`cantelli_error_bound` is a second, much tighter bound (Cantelli's inequality on the projection
of a query onto the direction between two support means, with the exact mean and variance of
that projection for episodes drawn as the bank draws them: supports and query distinct, without
replacement, from each finite class); derivation in its docstring and docs/bounds.md.

`ncc_error_bound` is the CDNV bound 8 (n - 1)(1 + 1/k) CDNV: nctune's own derivation (proved in
its docstring), not a constant quoted from Galanti et al. It holds for NCC on the raw features
the CDNV was measured on (`ncc_raw`), and is vacuous (>= 1) on every point measured so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from analysis.errors import InputError

# The constant c in  E[NCC error] <= c (n - 1) (1 + 1/k) CDNV: nctune's derivation, see below.
BOUND_CONSTANT = 8.0


def ncc_error_bound(cdnv: float, n_way: int, k_shot: int) -> float:
    """Upper bound on the expected error of n-way k-shot nearest-class-centre classification.

        E[error] <= 8 (n - 1) (1 + 1/k) CDNV,
        CDNV = Avg_{i<j} (Var_i + Var_j) / (2 ||mu_i - mu_j||^2)

    over the classes episodes are drawn from (the paper's CDNV: biased 1/N_c variances of the
    features the classifier sees; `cdnv/target` for "ncc_raw" on the target split). Values
    >= 1 are vacuous; the bound is returned unclipped so that it stays comparable across runs.

    The constant 8 (n - 1)(1 + 1/k) is nctune's own derivation (proved below), not the
    paper's: the paper's proposition could not be quoted.

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
    m_j = mu_j + b for the support means, D = mu_i - mu_j. Then x - m_j = D + z - b, so
        ||D|| <= ||x - m_j|| + ||z|| + ||b||.
    Misclassifying x as j requires ||x - m_j|| <= ||x - m_i|| = ||z - a|| <= ||z|| + ||a||, so
        ||D|| <= ||x - m_i|| + ||z|| + ||b|| <= 2||z|| + ||a|| + ||b||.
    (The shortcut ||D|| <= ||x - m_j|| + ||x - m_i|| is false: z = a = 0, b = D gives
    ||D|| <= 0.) By Markov's inequality and (2u + v + w)^2 <= 4 (2u^2 + v^2 + w^2),
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


_ROWS = 2048  # rows of the N x N Gram formed at once (2048 x N float64)
EXACT_CROSS_MAX = 6000  # target images up to which tr(Sigma_i Sigma_j) is computed exactly


@dataclass(frozen=True)
class PairMoments:
    """Per-class and per-pair moments of the features the NCC classifier sees (pool moments).

    Attributes:
        trace: (C,) tr Sigma_c = E||e||^2, e = x - mu_c for x of class c.
        fourth: (C,) E||e||^4.
        cross: (C, C) tr(Sigma_i Sigma_j) (diagonal: tr Sigma_i^2).
        dist2: (C, C) ||mu_i - mu_j||^2.
        dir_var: (C, C) [i, j] = Delta_ij^T Sigma_i Delta_ij, Delta_ij = mu_i - mu_j.
        third: (C, C) [i, j] = E[(Delta_ij . e_j) ||e_j||^2], e_j a deviation of class j.
        count: (C,) N_c, the images of class c (the finite population episodes draw from).
    """

    trace: Tensor
    fourth: Tensor
    cross: Tensor
    dist2: Tensor
    dir_var: Tensor
    third: Tensor
    count: Tensor


def pair_moments(features: Tensor, labels: Tensor, *,
                 exact_cross: bool | None = None) -> PairMoments:
    """Moments of each class's empirical distribution (1/N_c), all pairs at once.

    No loop over classes or pairs: with R the rows minus their class mean, H the (N, C) class
    indicator and P = R M^T (projections of deviations on the class means),
    tr(Sigma_i Sigma_j) = [H^T (R R^T)^2 H]_ij / (N_i N_j) (formed in row blocks, so memory stays
    O(N) per row), and the directional terms come from differences of columns of P.

    That cross term costs O(N^2 D). With `exact_cross` False (the default above EXACT_CROSS_MAX
    images: 50 s for Omniglot's 13k target images on one thread) the off-diagonal
    tr(Sigma_i Sigma_j) is replaced by its Cauchy-Schwarz upper bound
    sqrt(tr Sigma_i^2 tr Sigma_j^2), which needs only the per-class diagonal (O(N n D)): the
    variance of the margin can only grow, so the Cantelli bound stays a bound, a little looser.
    """
    x = features.detach().to(dtype=torch.float64)  # on the features' device
    y = torch.unique(labels.detach().to(x.device), return_inverse=True)[1]
    h = torch.nn.functional.one_hot(y).to(torch.float64)
    n = h.sum(0)
    means = h.T @ x / n[:, None]
    r = x - means[y]
    sq = (r ** 2).sum(1)
    trace = h.T @ sq / n
    fourth = h.T @ sq ** 2 / n
    exact = len(x) <= EXACT_CROSS_MAX if exact_cross is None else exact_cross
    cross = _cross_exact(r, h, n) if exact else _cross_cauchy_schwarz(r, y, n)
    g = means @ means.T
    dist2 = (g.diagonal()[:, None] + g.diagonal()[None, :] - 2 * g).clamp_min(0)
    p = r @ means.T  # (N, C): e_s . mu_c
    d = p.gather(1, y[:, None]) - p  # [s, j] = e_s . (mu_{y_s} - mu_j)
    dir_var = h.T @ d ** 2 / n[:, None]  # [i, j] = Delta_ij^T Sigma_i Delta_ij
    # [j, i] = E_{e in j}[e . (mu_j - mu_i) ||e||^2]; E[(Delta_ij . e_j)||e_j||^2] is minus it
    third = -(h.T @ (d * sq[:, None]) / n[:, None]).T
    return PairMoments(trace, fourth, cross, dist2, dir_var, third, n)


def _cross_exact(r: Tensor, h: Tensor, n: Tensor) -> Tensor:
    cross = torch.zeros(len(n), len(n), dtype=torch.float64, device=r.device)
    for start in range(0, len(r), _ROWS):  # row blocks: never the whole N x N Gram at once
        block = slice(start, start + _ROWS)
        cross += h[block].T @ ((r[block] @ r.T) ** 2 @ h)
    return cross / (n[:, None] * n[None, :])


def _cross_cauchy_schwarz(r: Tensor, y: Tensor, n: Tensor) -> Tensor:
    """tr(Sigma_i^2) exactly (per-class Grams, classes padded to the largest), and the
    Cauchy-Schwarz upper bound sqrt(tr Sigma_i^2 tr Sigma_j^2) off the diagonal."""
    order = torch.argsort(y, stable=True)
    first = torch.searchsorted(y[order], y[order])
    slot = torch.empty_like(y)
    slot[order] = torch.arange(len(y), device=y.device) - first
    padded = torch.zeros(len(n), int(n.max()), r.shape[1], dtype=torch.float64,
                         device=r.device)
    padded[y, slot] = r  # zero rows add nothing to a Gram
    diag = (padded @ padded.transpose(1, 2)).pow(2).sum((1, 2)) / n ** 2
    cross = (diag[:, None] * diag[None, :]).sqrt()
    cross.diagonal().copy_(diag)
    return cross


def _ratio(k: int, b: int, n: Tensor, nb: int) -> Tensor:
    """k_(b) / N_(nb) (falling factorials): the chance-weighted count of b distinct support
    positions (plus the query when nb = b + 1); 0 when b > k, so N_(nb) = 0 never divides."""
    num = math.prod(k - t for t in range(b))
    if num == 0:
        return torch.zeros_like(n)
    den = torch.ones_like(n)
    for t in range(nb):
        den = den * (n - t)
    return num / den


def class_sampling_moments(m: PairMoments, k_shot: int) -> dict[str, Tensor]:
    """Per-class moments of one class's k-shot support mean a and its query z, drawn as the
    episode bank draws them (k + 1 distinct images; derivation in docs/bounds.md).

    Returns (C,) tensors: `a2` E||a||^2, `var_a2` Var||a||^2, `mean_u` E U and `var_u` Var U
    for U = z.a - ||a||^2/2, and the coefficients `zu`, `a3` with E[zU] = zu * m3 and
    E[a||a||^2] = a3 * m3, m3 = E[e ||e||^2] the class's third-moment vector.
    """
    k, n = k_shot, m.count
    tau, rho, kap = m.trace, m.cross.diagonal(), m.fourth

    def r(b: int, nb: int) -> Tensor:
        return _ratio(k, b, n, nb)

    phi = n * (2 * n * rho + n * tau ** 2 - 6 * kap)  # distinct 4-index sum, see docs/bounds.md
    a2 = (r(1, 1) - r(2, 2)) * n * tau / k ** 2
    za = -r(1, 2) * n * tau / k
    z2a2 = (r(1, 2) * n * (n * rho - kap) - r(2, 3) * n * (n * rho - 2 * kap)) / k ** 2
    za_a2 = (-r(1, 2) * n * kap + (r(3, 4) - r(2, 3)) * phi) / k ** 3
    a4 = (r(1, 1) * n * kap + r(2, 2) * (phi - n * kap) - 2 * r(3, 3) * phi
          + r(4, 4) * phi) / k ** 4
    mean_u = za - a2 / 2
    zu = -r(1, 2) * n / k - (2 * r(2, 3) - r(1, 2)) * n / (2 * k ** 2)
    a3 = (r(1, 1) - 3 * r(2, 2) + 2 * r(3, 3)) * n / k ** 3
    return {"a2": a2, "var_a2": a4 - a2 ** 2, "mean_u": mean_u,
            "var_u": z2a2 - za_a2 + a4 / 4 - mean_u ** 2, "zu": zu, "a3": a3}


def projection_moments(m: PairMoments, k_shot: int) -> tuple[Tensor, Tensor]:
    """(C, C) mean and variance of W_ij, the query's signed margin, for episodes drawn without
    replacement (see `cantelli_error_bound`; docs/bounds.md for the derivation).

    Raises:
        InputError: a class has fewer than k_shot + 1 images (no episode can be drawn).
    """
    small = m.count < k_shot + 1
    if bool(small.any()):
        raise InputError(f"a {k_shot}-shot episode needs k_shot + 1 = {k_shot + 1} images per "
                         f"class (supports and a query), but {int(small.sum())} classes have "
                         f"fewer (smallest {int(m.count.min())})")
    s = class_sampling_moments(m, k_shot)
    cov_b = ((m.count - k_shot) / ((m.count - 1) * k_shot))[None, :]  # Cov b = cov_b Sigma_j
    own = -m.third.T  # [i, j] = Delta_ij . m3_i
    mean = m.dist2 / 2 + s["mean_u"][:, None] + s["a2"][None, :] / 2
    var = (m.dir_var + s["var_u"][:, None] + 2 * s["zu"][:, None] * own
           + cov_b * (m.dir_var.T + m.cross)
           + s["var_a2"][None, :] / 4 - s["a3"][None, :] * m.third).clamp_min(0)
    return mean, var


def cantelli_pair_terms(m: PairMoments, k_shot: int) -> Tensor:
    """(C, C) matrix c_ij >= P(a query of class i is closer to the support mean of j than of i).

    Cantelli's inequality on W_ij's mean and variance; 1 where E[W] <= 0; the diagonal is 0.
    """
    mean, var = projection_moments(m, k_shot)
    c = torch.where(mean > 0, var / (var + mean ** 2).clamp_min(1e-300), torch.ones_like(mean))
    c.fill_diagonal_(0.0)
    return c


def cantelli_error_bound(features: Tensor, labels: Tensor, n_way: int, k_shot: int) -> float:
    """Upper bound on the expected n-way k-shot NCC error via Cantelli's inequality.

    Not in Galanti et al.; nctune's own derivation, written out here. Features are those the
    NCC classifier compares (for the primary `ncc`: target features centred on the
    source-train mean, then L2-normalised), labels the target classes.

    Model (the episode bank's sampling, `analysis.measure.fewshot_episodes`). An episode draws
    n of the C classes uniformly; for each way, k + 1 distinct images of its class uniformly
    without replacement from the class's N_c target images: k supports and a query (the bank
    takes k + q; each of its q queries is, marginally, such a (k+1)-th image, and the error is
    their average). Classes are drawn independently of each other. Moments are those of the
    finite class (1/N_c): tr Sigma, E||e||^4, tr(Sigma_i Sigma_j), m3 = E[e ||e||^2].

    Pair step. Query x of class i, support means m_i, m_j. NCC errs towards j iff
        W = (x - (m_i + m_j)/2) . (m_i - m_j) <= 0     (ties count as errors).
    With z = x - mu_i, a = m_i - mu_i, b = m_j - mu_j and Delta = mu_i - mu_j,
        W = ||Delta||^2/2 + Delta.z + U - Delta.b + ||b||^2/2 - z.b,   U = z.a - ||a||^2/2.
    b is independent of (z, a) and E z = E b = 0, so every covariance between the class-i part
    (Delta.z + U), the class-j part (-Delta.b + ||b||^2/2) and z.b vanishes, and
        E W = ||Delta||^2/2 + E U_i + E||b||^2/2,
        Var W = Delta^T Sigma_i Delta + Var U_i + 2 Delta.E[zU]_i
                + f_j (Delta^T Sigma_j Delta + tr(Sigma_i Sigma_j)) / k
                + Var||b||^2 / 4 - Delta.E[b ||b||^2],      f_j = (N_j - k)/(N_j - 1),
    the finite-population correction of Cov b = f_j Sigma_j / k. The query is not independent of
    its own support: E[z | a] = -k a / (N_i - k) (the class's deviations sum to 0), so
    E[z.a] = -tr Sigma_i / (N_i - 1) and E U_i = -(N_i + k) tr Sigma_i / (2 k (N_i - 1))
    (-tr Sigma_i / (2k) with replacement: the query sits farther from its own support mean).
    E U, Var U, Var||a||^2 and the vectors E[zU] = zu * m3, E[a ||a||^2] = a3 * m3 are exact
    sums over which of the k + 1 drawn positions coincide, with falling-factorial weights
    k_(b) / N_(b); `class_sampling_moments` gives them and docs/bounds.md derives them (they
    equal the enumeration of every draw, tests/analysis/measure/test_bound_finite.py). Being
    exact, they make Cantelli's one-sided inequality
        P(W <= 0) <= Var W / (Var W + (E W)^2)   when E W > 0   (else 1)
    a bound for the bank's episodes, c_ij. Above EXACT_CROSS_MAX target images
    tr(Sigma_i Sigma_j) is replaced by its Cauchy-Schwarz upper bound (see `pair_moments`):
    Var W only grows, so this stays a bound.

    Union and average. For the episode's classes S and a query of class i,
    P(error) <= min(1, sum_{j in S, j != i} c_ij); averaging over i in S and over uniform S,
    and moving the expectation inside min(1, .) (concave, Jensen),
        E[error] <= (1/C) sum_i min(1, (n-1)/(C-1) sum_{j != i} c_ij).

    Args:
        features: (N, D) features in the classifier's space.
        labels: (N,) class labels; every class needs at least k_shot + 1 images.
        n_way: ways n, 2 <= n <= C.
        k_shot: shots k >= 1.

    Raises:
        InputError: n_way or k_shot out of range, or a class with fewer than k_shot + 1 images.
    """
    return cantelli_bound_from_moments(pair_moments(features, labels), n_way, k_shot)


def cantelli_bound_from_moments(m: PairMoments, n_way: int, k_shot: int) -> float:
    """`cantelli_error_bound` from moments computed once (they do not depend on the shape)."""
    classes = len(m.trace)
    for name, v, low, high in (("n_way", n_way, 2, classes), ("k_shot", k_shot, 1, None)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low or (high and v > high):
            raise InputError(f"{name} must be an integer in [{low}, {high or 'inf'}], got {v!r}")
    c = cantelli_pair_terms(m, k_shot)
    per_class = (c.sum(1) * (n_way - 1) / (classes - 1)).clamp_max(1.0)
    return float(per_class.mean())
