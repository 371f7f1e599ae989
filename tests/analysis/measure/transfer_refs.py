"""Slow, obvious references for the transferability estimators: loops, numpy, scikit-learn.

Each follows the paper's formula literally (per class, per pair, per sample) so that the
vectorised torch versions in analysis.measure.transfer* are checked against an independent path.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis


def logme_ref(f: np.ndarray, y: np.ndarray) -> float:
    """Per class: the same fixed point, with A = F^T F + t I solved directly (no SVD)."""
    n, d = f.shape
    ftf = f.T @ f
    sigma = np.clip(np.linalg.eigvalsh(ftf), 0, None)  # all D, zeros included
    out = []
    for c in np.unique(y):
        t_y = (y == c).astype(float)
        alpha = beta = 1.0
        for _ in range(11):
            t = alpha / beta
            a = ftf + t * np.eye(d)
            m = np.linalg.solve(a, f.T @ t_y)
            m2 = float(m @ m)
            res2 = float(((t_y - f @ m) ** 2).sum())
            gamma = float(np.trace(ftf @ np.linalg.inv(a)))
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        logdet = float(np.sum(np.log(alpha + beta * sigma)))
        ev = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - 0.5 * logdet
              - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi))
        out.append(ev / n)
    return float(np.mean(out))


def hscore_ref(f: np.ndarray, y: np.ndarray) -> float:
    f = f - f.mean(0)
    lw = LedoitWolf(assume_centered=False).fit(f)
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    cov_g = np.cov(g, rowvar=False)
    return float(np.trace(np.linalg.pinv(lw.covariance_) @ ((1 - lw.shrinkage_) * cov_g)))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def leep_ref(logits: np.ndarray, y: np.ndarray) -> float:
    theta = softmax(logits)
    n, zs = theta.shape
    classes = np.unique(y)
    joint = np.zeros((len(classes), zs))
    for i in range(n):
        joint[np.searchsorted(classes, y[i])] += theta[i] / n
    cond = joint / joint.sum(0)
    total = 0.0
    for i in range(n):
        c = np.searchsorted(classes, y[i])
        total += math.log(sum(cond[c, z] * theta[i, z] for z in range(zs)))
    return total / n


def nce_ref(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits.argmax(1)
    n = len(y)
    total = 0.0
    for zz in np.unique(z):
        pz = np.mean(z == zz)
        for c in np.unique(y):
            pyz = np.mean((z == zz) & (y == c))
            if pyz > 0:
                total += pyz * math.log(pyz / pz)
    assert n > 0
    return total


def gbc_ref(f: np.ndarray, y: np.ndarray, dims: int = 64, gaussian: str = "spherical") -> float:
    """The GBC authors' code (google-research stable_transfer gbc.py) after a 64-d PCA: per
    class np.var floored at 1e-4; spherical = the mean of those; the log term on the scalar."""
    z = PCA(n_components=min(dims, *f.shape)).fit_transform(f)
    classes = np.unique(y)
    stats = {c: (z[y == c].mean(0), np.maximum(z[y == c].var(0), 1e-4)) for c in classes}
    total = 0.0
    for i in classes:
        for j in classes:
            if i == j:
                continue
            (mi, vi), (mj, vj) = stats[i], stats[j]
            if gaussian == "spherical":
                vi, vj = np.mean(vi), np.mean(vj)
            v = (vi + vj) / 2
            db = (np.sum((mi - mj) ** 2 / v) / 8
                  + 0.5 * (np.sum(np.log(v)) - 0.5 * np.sum(np.log(vi)) - 0.5 * np.sum(np.log(vj))))
            total += math.exp(-db)
    return -total


def sfda_ref(f: np.ndarray, y: np.ndarray) -> float:
    classes = np.unique(y)
    sw = sum(np.mean(y == c) * np.cov(f[y == c].T, bias=True) for c in classes)
    shrink = max(math.exp(-5 * np.linalg.eigvalsh(sw)[-1]), 1e-10)
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrink).fit(f, y)
    p = softmax(lda.predict_proba(f))
    means = np.stack([f[y == c].mean(0) for c in classes])
    mixed = f.copy()
    for k, c in enumerate(classes):
        other = (means.sum(0) - means[k]) / (len(classes) - 1)
        for i in np.flatnonzero(y == c):
            mixed[i] = p[i, k] * f[i] + (1 - p[i, k]) * other
    p2 = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrink).fit(mixed, y)
    prob = p2.predict_proba(mixed)
    return float(np.mean([prob[i, np.searchsorted(classes, y[i])] for i in range(len(y))]))


def ncti_ref(f: np.ndarray, y: np.ndarray) -> dict[str, float]:
    pca = PCA(n_components=min(64, *f.shape))
    z = pca.fit_transform(f)
    shrink = max(math.exp(-pca.explained_variance_[:32].sum()), 1e-10)
    # the authors (BUserName/NCTI metrics.py): the svd solver when the shrinkage is at its floor
    lda = (LinearDiscriminantAnalysis(solver="svd") if shrink == 1e-10
           else LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrink))
    low = lda.fit_transform(z, y)
    low = low - low.mean(0)
    p = lda.predict_proba(z)
    classes = np.unique(y)
    vc = sum(np.linalg.norm(p[y == c], ord="nuc") for c in classes)
    ncc = np.mean([p[i, np.searchsorted(classes, y[i])] for i in range(len(y))])
    return {"ncti_seli": float(np.linalg.norm(low, ord="nuc")), "ncti_ncc": float(ncc),
            "ncti_vc": math.log(vc)}


def knn_ref(f: np.ndarray, y: np.ndarray, k: int) -> float:
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    correct = 0
    for i in range(len(y)):
        sims = sorted(((float(fn[i] @ fn[j]), j) for j in range(len(y)) if j != i),
                      reverse=True)[:k]
        tally: dict[int, tuple[int, float]] = {}
        for s, j in sims:
            cnt, tot = tally.get(int(y[j]), (0, 0.0))
            tally[int(y[j])] = (cnt + 1, tot + s)
        best = max(tally.items(), key=lambda kv: kv[1])[0]
        correct += best == y[i]
    return correct / len(y)
