"""Slow, obvious references for the collapse metrics: numpy float64, loops over classes and pairs.

Written from the formulas, independently of analysis.measure.collapse*, so the tests compare two
implementations that share nothing but the definitions.
"""

from __future__ import annotations

import numpy as np


def class_moments(x: np.ndarray, y: np.ndarray, num_classes: int):
    """Per class: count, mean, sum of squared deviations, covariance sum (two-pass, float64)."""
    x = np.asarray(x, dtype=np.float64)
    out = []
    for c in range(num_classes):
        xc = x[y == c]
        mu = xc.mean(0) if len(xc) else np.zeros(x.shape[1])
        dev = xc - mu
        out.append((len(xc), mu, float((dev**2).sum()), dev.T @ dev))
    return out


def included(moments) -> list[int]:
    return [c for c, m in enumerate(moments) if m[0] >= 2]


def cdnv_pairs(x, y, num_classes, *, unbiased=False, asymmetric=False, directional=False):
    """{(i, j): value} for i<j (every ordered i != j if asymmetric); coincident pairs left out."""
    mom = class_moments(x, y, num_classes)
    keep = included(mom)
    out = {}
    for i in keep:
        for j in keep:
            if i == j or (j < i and not asymmetric):
                continue
            diff = mom[i][1] - mom[j][1]
            d2 = float(diff @ diff)
            if d2 == 0.0:
                continue

            def spread(c, diff=diff, d2=d2):
                n = mom[c][0] - (1 if unbiased else 0)
                if directional:
                    u = diff / np.sqrt(d2)
                    return float(u @ (mom[c][3] / n) @ u)
                return mom[c][2] / n

            if asymmetric:
                out[(i, j)] = spread(i) / d2
            else:
                out[(i, j)] = (spread(i) + spread(j)) / (2.0 * d2)
    return out


def nc_refs(x, y, num_classes, weight=None):
    """NC1, NC2 equinorm, NC2 equiangle, NC3 straight from the definitions."""
    mom = class_moments(x, y, num_classes)
    keep = included(mom)
    k = len(keep)
    n = sum(mom[c][0] for c in keep)
    s_w = sum(mom[c][3] for c in keep) / n
    means = np.stack([mom[c][1] for c in keep])
    m = means - means.mean(0)
    s_b = m.T @ m / k
    nc1 = float(np.trace(s_w @ np.linalg.pinv(s_b, rcond=1e-10, hermitian=True)) / k)
    norms = np.array([np.linalg.norm(r) for r in m])
    equinorm = float(norms.std(ddof=1) / norms.mean())
    devs = []
    for a in range(k):
        for b in range(a + 1, k):
            cos = m[a] @ m[b] / (norms[a] * norms[b])
            devs.append(abs(cos + 1.0 / (k - 1)))
    out = {"nc1": nc1, "nc2_equinorm": equinorm, "nc2_equiangle": float(np.mean(devs))}
    if weight is not None:
        w = np.asarray(weight, dtype=np.float64)[keep]
        out["nc3"] = float(np.linalg.norm(w / np.linalg.norm(w) - m / np.linalg.norm(m)) ** 2)
    return out


def nc4_ref(x, logits, centres) -> float:
    x = np.asarray(x, dtype=np.float64)
    centres = np.asarray(centres, dtype=np.float64)
    wrong = 0
    for row, lg in zip(x, np.asarray(logits), strict=True):
        nearest = int(np.argmin([np.linalg.norm(row - c) for c in centres]))
        wrong += nearest != int(np.argmax(lg))
    return wrong / len(x)
