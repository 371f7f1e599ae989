"""Upper bounds on the few-shot error of nearest-class-centre classification.

`ncc_error_bound` is the CDNV bound 8 (n - 1)(1 + 1/k) CDNV: nctune's own derivation (proved in
its docstring), not a constant quoted from Galanti et al. It holds for NCC on the raw features
the CDNV was measured on (`ncc_raw`), and is vacuous (>= 1) on every point measured so far.
"""

from __future__ import annotations

import math

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
