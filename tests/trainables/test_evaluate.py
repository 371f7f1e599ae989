"""`evaluate()` against slow, obvious references on the same tiny model and data.

Every penultimate-layer metric a trial reports is recomputed here from scratch: features by a
plain forward pass, the per-class cap by a loop, CDNV per pair and NC1-NC4 from their formulas
(tests/analysis/measure/collapse_refs.py), few-shot accuracy episode by episode (nearest centre
by explicit distances, the logistic probe by scikit-learn), the bound by its formula. The
per-layer family (`layer/...`) is checked against references in tests/trainables/test_taps.py;
for the transferability estimators (`transfer/...`) and the Cantelli bound, whose formulas
tests/analysis/measure/test_transfer.py and test_bound_cantelli.py check, this file checks that
the evaluation feeds them the right features: the target's, as extracted (and logits of the
source head), or as the primary classifier sees them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from analysis import contract as names
from analysis.measure.bound import cantelli_error_bound
from analysis.measure.fewshot import EpisodeBank
from analysis.measure.transfer import transfer_metrics
from tests.analysis.measure.collapse_refs import cdnv_pairs, nc4_ref, nc_refs
from tests.trainables.test_pretrain import tiny_config
from trainables.augment import normalize
from trainables.data import Split
from trainables.evaluate import Features, evaluate, evaluate_target
from trainables.pretrain import Trainer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def measured() -> tuple[Trainer, dict[str, float]]:
    """A tiny trial after one epoch of training, and what `evaluate` reports for it."""
    t = Trainer(tiny_config(), threads=1, device=CPU)
    t.epoch = 1
    t.train_epoch()
    return t, evaluate(t.model, t.data, t.banks, t.cfg.evaluation, CPU)


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def forward(t: Trainer, split: Split, rows: list[int] | None = None) -> Arrays:
    """Penultimate features, logits and labels of the rows (all by default), eval mode, one
    plain pass."""
    rows = list(range(len(split.labels))) if rows is None else rows
    t.model.eval()
    with torch.no_grad():
        feats = t.model.features(normalize(split.images[rows]))
        logits = t.model.classifier(feats)
    return feats.double().numpy(), logits.double().numpy(), split.labels[rows].numpy()


def by_hand(t: Trainer) -> dict[str, Arrays]:
    """Each split's features as the evaluation should see them: source-train capped."""
    data, cap = t.data, t.cfg.evaluation.features_per_class
    rows = first_per_class(data.source_train.labels.numpy(), cap)
    assert len(rows) == cap * len(data.source_train.class_names)  # the cap takes effect
    return {names.SOURCE_TRAIN: forward(t, data.source_train, rows),
            names.SOURCE_TEST: forward(t, data.source_test), names.TARGET: forward(t, data.target)}


def first_per_class(labels: np.ndarray, cap: int) -> list[int]:
    """The first `cap` rows of every class, in row order (the source-train cap)."""
    seen: dict[int, int] = {}
    rows = []
    for i, y in enumerate(labels.tolist()):
        if seen.get(y, 0) < cap:
            rows.append(i)
            seen[y] = seen.get(y, 0) + 1
    return rows


def collapse_ref(x: np.ndarray, y: np.ndarray, c: int) -> dict[str, float]:
    """The six collapse families of one split from the loop references."""
    nc = nc_refs(x, y, c)
    return {"cdnv": float(np.mean(list(cdnv_pairs(x, y, c).values()))),
            "cdnv_unbiased": float(np.mean(list(cdnv_pairs(x, y, c, unbiased=True).values()))),
            "cdnv_dir": float(np.mean(list(cdnv_pairs(x, y, c, directional=True).values()))),
            **{k: nc[k] for k in ("nc1", "nc2_equinorm", "nc2_equiangle")}}


def ncc_episode_acc(x: np.ndarray, bank: EpisodeBank, e: int) -> float:
    """One episode: each query goes to the way whose support mean is nearest."""
    protos = [x[bank.support[e, w].numpy()].mean(0) for w in range(bank.n_way)]
    right = 0
    for w in range(bank.n_way):
        for q in bank.query[e, w].tolist():
            dists = [float(np.sum((x[q] - p) ** 2)) for p in protos]
            right += int(np.argmin(dists)) == w
    return right / (bank.n_way * bank.q_query)


def logreg_episode_acc(x: np.ndarray, bank: EpisodeBank, e: int) -> float:
    """One episode of the RFS probe: sklearn's LogisticRegression(C=1) on L2-normalised
    features, solved tightly (the batched solver matches it at tol=1e-10)."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sup = bank.support[e].numpy()
    ways = np.repeat(np.arange(bank.n_way), bank.k_shot)
    clf = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000)
    clf.fit(unit[sup.reshape(-1)], ways)
    pred = clf.predict(unit[bank.query[e].numpy().reshape(-1)])
    return float(np.mean(pred == np.repeat(np.arange(bank.n_way), bank.q_query)))


def mean_and_ci95(accs: list[float]) -> tuple[float, float]:
    """SimpleShot's summary: the mean and 1.96 std / sqrt(E), std with divisor E."""
    a = np.array(accs)
    return float(a.mean()), float(1.96 * a.std() / math.sqrt(len(a)))


def test_every_penultimate_metric_equals_its_reference(measured) -> None:
    t, out = measured
    ev, num_source = t.cfg.evaluation, len(t.data.source_train.class_names)
    feats = by_hand(t)
    src, _, src_y = feats[names.SOURCE_TRAIN]
    test, test_logits, test_y = feats[names.SOURCE_TEST]
    tgt, _, tgt_y = feats[names.TARGET]
    expected: dict[str, float] = {
        names.SOURCE_TEST_ACC: float(np.mean(test_logits.argmax(1) == test_y))}
    weight = t.model.classifier.weight.detach().double().numpy()
    src_means = np.stack([src[src_y == c].mean(0) for c in range(num_source)])
    for split, x, y, c in ((names.SOURCE_TRAIN, src, src_y, num_source),
                           (names.SOURCE_TEST, test, test_y, num_source),
                           (names.TARGET, tgt, tgt_y, int(tgt_y.max()) + 1)):
        for family, value in collapse_ref(x, y, c).items():
            expected[names.collapse_key(family, split)] = value
    expected[names.NC3_SOURCE] = nc_refs(src, src_y, num_source, weight=weight)["nc3"]
    expected[names.NC4_SOURCE_TEST] = nc4_ref(test, test_logits, src_means)
    expected.update(fewshot_refs(t, tgt, src.mean(0)))
    for shape in ev.shapes:
        n_way, k_shot = names.parse_shape(shape)
        cdnv = expected[names.CDNV_TARGET]
        expected[names.bound_key(shape)] = 8 * (n_way - 1) * (1 + 1 / k_shot) * cdnv

    for key, value in expected.items():
        assert out[key] == pytest.approx(value, rel=1e-4, abs=1e-9), key
    others = set(out) - set(expected) - {names.EVAL_TIME}
    families = (names.LAYER_PREFIX, names.TRANSFER_PREFIX, names.BOUND_CANTELLI_PREFIX)
    assert {k for k in others if k.split("/")[0] not in families} == set()


def fewshot_refs(t: Trainer, tgt: np.ndarray, center: np.ndarray) -> dict[str, float]:
    """Accuracy and ci95 of every classifier and shape, one episode at a time."""
    ev = t.cfg.evaluation
    views = {"ncc_raw": tgt, "ncc_l2": tgt / np.linalg.norm(tgt, axis=1, keepdims=True)}
    centred = tgt - center  # SimpleShot's CL2N: centre on the source-train mean, then L2
    views["ncc"] = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    out = {}
    for shape, bank in t.banks.items():
        assert bank.episodes == ev.episodes and bank.q_query == ev.queries
        for clf in ev.classifiers:
            if clf == "logreg":
                accs = [logreg_episode_acc(tgt, bank, e) for e in range(ev.probe_episodes)]
            else:
                accs = [ncc_episode_acc(views[clf], bank, e) for e in range(bank.episodes)]
            mean, ci95 = mean_and_ci95(accs)
            out[names.fewshot_key(shape, clf, "acc")] = mean
            out[names.fewshot_key(shape, clf, "ci95")] = ci95
    return out


def test_the_cantelli_bound_is_fed_the_primary_classifiers_features(measured) -> None:
    """On the tiny model the bound is vacuous (1.0 for any input), so this check feeds
    `evaluate_target`, the target half of `evaluate`, separated clusters far from the centre,
    where the bound is informative and depends on the centring and the normalisation."""
    t, _ = measured
    labels = t.data.target.labels
    gen = torch.Generator().manual_seed(0)
    means = 4.0 * torch.randn(int(labels.max()) + 1, 16, generator=gen)
    feats = means[labels] + 0.5 * torch.randn(len(labels), 16, generator=gen) + 3.0
    center = 3.0 + 0.1 * torch.randn(16, generator=gen)
    ev = t.cfg.evaluation.model_copy(update={"estimators": [], "classifiers": ["ncc"]})
    out = evaluate_target(Features(feats, torch.zeros(len(labels), 2), labels), t.banks, ev,
                          center=center)
    unit = torch.nn.functional.normalize(feats - center, dim=1)
    for shape in ev.shapes:
        expected = cantelli_error_bound(unit, labels, *names.parse_shape(shape))
        assert 0 < expected < 0.5, expected  # informative: not clipped at 1
        assert out[names.bound_cantelli_key(shape)] == pytest.approx(expected, rel=1e-6), shape
        raw = cantelli_error_bound(feats, labels, *names.parse_shape(shape))
        assert raw != pytest.approx(expected, rel=1e-3)  # the transform matters here


def test_the_transfer_estimators_see_the_target_features_and_source_logits(measured) -> None:
    t, out = measured
    tgt, logits, tgt_y = by_hand(t)[names.TARGET]
    estimators = list(t.cfg.evaluation.estimators)
    assert estimators  # the default evaluation runs all of them
    expected = transfer_metrics(torch.from_numpy(tgt).float(), torch.from_numpy(tgt_y),
                                torch.from_numpy(logits).float(), estimators)
    for name in estimators:
        assert out[names.transfer_key(name)] == pytest.approx(expected[name], rel=1e-4,
                                                                abs=1e-6), name


def test_the_measured_model_is_not_degenerate(measured) -> None:
    """The references above compare something: the metrics vary and accuracy beats chance."""
    t, out = measured
    assert out[names.fewshot_key("5w5s", "ncc")] > 0.3  # chance is 0.2
    assert 0 < out[names.CDNV_TARGET] < 100
    assert len({round(out[names.fewshot_key("5w5s", c)], 6) for c in
                t.cfg.evaluation.classifiers}) > 1
