"""NCC variants against a per-episode numpy reference, accuracy sanity, results, errors, bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import analysis.measure.fewshot_classifiers as registry
from analysis.measure.fewshot import (
    FewShotClassifier,
    episode_accuracy,
    evaluate_episodes,
    list_classifiers,
    predict_episodes,
    register_classifier,
    sample_episodes,
)
from analysis.measure.fewshot_kernels import make_kernel

NCC = ["ncc", "ncc_raw", "ncc_l2"]


def _clusters(
    num_classes: int, per_class: int, dim: int, noise: float, seed: int, dtype=torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters around random class means, rows shuffled."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, dim, generator=g, dtype=torch.float64) + 0.5
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    x = means[labels] + noise * torch.randn(labels.numel(), dim, generator=g, dtype=torch.float64)
    return x.to(dtype), labels


def _reference_accuracies(
    features: np.ndarray, support: np.ndarray, query: np.ndarray, variant: str, center: np.ndarray
) -> np.ndarray:
    """The slow, obvious per-episode loop (numpy), for comparison."""

    def transform(x: np.ndarray) -> np.ndarray:
        if variant == "ncc":
            x = x - center
        if variant in ("ncc", "ncc_l2"):
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return x

    accs = []
    for sup, qry in zip(support, query, strict=True):
        n_way, k_shot = sup.shape
        protos = transform(features[sup.reshape(-1)]).reshape(n_way, k_shot, -1).mean(axis=1)
        q = transform(features[qry.reshape(-1)])
        dists = ((q[:, None, :] - protos[None, :, :]) ** 2).sum(axis=-1)
        truth = np.repeat(np.arange(n_way), qry.shape[1])
        accs.append(float((dists.argmin(axis=1) == truth).mean()))
    return np.array(accs)


@pytest.mark.parametrize("variant", NCC)
@pytest.mark.parametrize("method", ["gram", "gather"])
@pytest.mark.parametrize(("n_way", "k_shot", "q_query"), [(5, 1, 15), (5, 5, 15), (3, 4, 2)])
def test_ncc_matches_per_episode_numpy_loop(
    variant: str, method: str, n_way: int, k_shot: int, q_query: int
) -> None:
    x, labels = _clusters(12, 20, 16, noise=2.0, seed=n_way * 10 + k_shot)
    center = torch.randn(16, dtype=torch.float64)
    bank = sample_episodes(
        labels, n_way=n_way, k_shot=k_shot, q_query=q_query, episodes=150, seed=5
    )
    got = evaluate_episodes(x, bank, variant, center=center, method=method)
    want = _reference_accuracies(
        x.numpy(), bank.support.numpy(), bank.query.numpy(), variant, center.numpy()
    )
    np.testing.assert_allclose(got.accuracies.numpy(), want, rtol=0, atol=1e-12)
    assert 0.3 < want.mean() < 0.97  # a test that could tell a wrong answer from a right one


def test_gram_and_gather_agree_in_float32() -> None:
    x, labels = _clusters(30, 20, 64, noise=1.5, seed=1, dtype=torch.float32)
    bank = sample_episodes(labels, n_way=5, k_shot=5, q_query=15, episodes=400, seed=0)
    center = x.mean(0)
    for variant in NCC:
        a = evaluate_episodes(x, bank, variant, center=center, method="gram")
        b = evaluate_episodes(x, bank, variant, center=center, method="gather")
        # float32 rounding may flip a near-tied query: allow a handful out of 30,000.
        assert (a.accuracies - b.accuracies).abs().sum() * 75 <= 5


def test_kernel_choice_follows_the_costs() -> None:
    ncc = registry.create_classifier("ncc_raw")
    small = torch.randn(800, 512)
    costs = ncc.kernel_costs(5, 5, 15, 800, 512)
    assert make_kernel(small, episodes=10_000, costs=costs, method=None).kind == "gram"
    assert make_kernel(small, episodes=5, costs=costs, method=None).kind == "gather"
    large = torch.randn(9000, 4)  # its Gram matrix would be over GRAM_MAX_ELEMENTS
    costs = ncc.kernel_costs(5, 5, 15, 9000, 4)
    assert make_kernel(large, episodes=10**6, costs=costs, method=None).kind == "gather"
    with pytest.raises(ValueError, match="method must be 'gram', 'gather' or None"):
        make_kernel(small, episodes=1, costs=costs, method="dense")


@pytest.mark.parametrize("classifier", ["ncc", "ncc_raw", "ncc_l2", "logreg"])
def test_accuracy_is_one_on_separated_clusters(classifier: str) -> None:
    x, labels = _clusters(10, 20, 32, noise=0.01, seed=2, dtype=torch.float32)
    bank = sample_episodes(labels, n_way=5, k_shot=1, q_query=10, episodes=100, seed=1)
    res = evaluate_episodes(x, bank, classifier, center=torch.zeros(32))
    assert res.mean == 1.0 and res.ci95 == 0.0
    assert torch.equal(res.accuracies, torch.ones(100, dtype=torch.float64))


@pytest.mark.parametrize("variant", NCC)
def test_accuracy_is_chance_on_pure_noise(variant: str) -> None:
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(20).repeat_interleave(20)
    x = torch.randn(400, 32, generator=g)  # labels carry no information
    bank = sample_episodes(labels, n_way=5, k_shot=1, q_query=15, episodes=2000, seed=2)
    res = evaluate_episodes(x, bank, variant, center=torch.zeros(32))
    assert abs(res.mean - 1 / 5) < 0.02
    assert abs(res.mean - 1 / 5) < 4 * res.ci95


def test_result_mean_and_ci95_follow_their_formulas() -> None:
    x, labels = _clusters(10, 20, 8, noise=2.0, seed=4)
    bank = sample_episodes(labels, n_way=5, k_shot=1, q_query=5, episodes=300, seed=0)
    res = evaluate_episodes(x, bank, "ncc_raw")
    acc = res.accuracies.numpy()
    assert res.accuracies.dtype == torch.float64 and res.episodes == 300
    assert res.mean == pytest.approx(acc.mean(), abs=1e-15)
    assert res.ci95 == pytest.approx(1.96 * acc.std() / math.sqrt(300), rel=1e-12)
    assert 0 < res.ci95 < 0.1


@pytest.mark.parametrize("classifier", ["ncc", "logreg"])
def test_predictions_agree_with_accuracies(classifier: str) -> None:
    x, labels = _clusters(10, 20, 8, noise=2.0, seed=8)
    bank = sample_episodes(labels, n_way=5, k_shot=2, q_query=6, episodes=80, seed=0)
    pred = predict_episodes(x, bank, classifier, center=x.mean(0))
    assert pred.shape == (80, 5, 6) and pred.dtype == torch.int64
    acc = (pred == torch.arange(5)[None, :, None]).double().mean(dim=(1, 2))
    res = evaluate_episodes(x, bank, classifier, center=x.mean(0))
    torch.testing.assert_close(acc, res.accuracies)
    assert torch.is_grad_enabled()  # evaluation must not leave autograd switched off


def test_episode_accuracy_splits_ties() -> None:
    # scores[b, w, i] rates way w for query i; with q_query=1, query i belongs to way i.
    scores = torch.tensor(
        [
            [[5.0, 0.0, 3.0], [1.0, 2.0, 3.0], [0.0, 1.0, 1.0]],
            [[1.0, 0.0, 2.0], [1.0, 0.0, 2.0], [0.0, 0.0, 2.0]],
        ]
    )
    acc = episode_accuracy(scores, q_query=1)
    # Episode 0: queries 0 and 1 right; query 2's top (3) is shared by ways 0 and 1, not its own.
    # Episode 1: query 0 ties 2 ways (own among them): 1/2; queries 1 and 2 tie all 3: 1/3 each.
    want = torch.tensor([2 / 3, (1 / 2 + 1 / 3 + 1 / 3) / 3], dtype=torch.float64)
    torch.testing.assert_close(acc, want)


def test_max_episodes_evaluates_the_first_episodes() -> None:
    x, labels = _clusters(10, 20, 8, noise=2.0, seed=4)
    bank = sample_episodes(labels, n_way=5, k_shot=2, q_query=5, episodes=300, seed=0)
    full = evaluate_episodes(x, bank, "ncc_l2")
    head = evaluate_episodes(x, bank, "ncc_l2", max_episodes=40)
    assert torch.equal(head.accuracies, full.accuracies[:40])
    assert evaluate_episodes(x, bank, "ncc_l2", max_episodes=10**6).episodes == 300


def test_ncc_centres_with_the_given_center() -> None:
    x, labels = _clusters(10, 20, 8, noise=2.0, seed=6)
    center = torch.linspace(-3, 3, 8, dtype=torch.float64)
    bank = sample_episodes(labels, n_way=5, k_shot=1, q_query=5, episodes=200, seed=0)
    a = evaluate_episodes(x, bank, "ncc", center=center)
    b = evaluate_episodes(x - center, bank, "ncc_l2")
    c = evaluate_episodes(x, bank, "ncc_l2")
    assert torch.equal(a.accuracies, b.accuracies)
    assert not torch.equal(a.accuracies, c.accuracies)  # the centre matters


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), shift=st.floats(-50, 50), scale=st.floats(0.01, 100))
def test_ncc_invariances(seed: int, shift: float, scale: float) -> None:
    x, labels = _clusters(8, 10, 6, noise=1.5, seed=seed % 1000)
    bank = sample_episodes(labels, n_way=4, k_shot=3, q_query=4, episodes=60, seed=seed)
    g = torch.Generator().manual_seed(seed)
    rot, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    row_scale = torch.rand(x.shape[0], 1, generator=g, dtype=torch.float64) * scale + 1e-3
    center = torch.randn(6, generator=g, dtype=torch.float64)
    raw = evaluate_episodes(x, bank, "ncc_raw").accuracies
    # Distances are invariant to a rigid motion of all features.
    assert torch.equal(evaluate_episodes(x @ rot + shift, bank, "ncc_raw").accuracies, raw)
    # L2 normalisation removes any positive per-item scale.
    l2 = evaluate_episodes(x, bank, "ncc_l2").accuracies
    assert torch.equal(evaluate_episodes(x * row_scale, bank, "ncc_l2").accuracies, l2)
    # CL2N is invariant to scaling features and centre together.
    cl2n = evaluate_episodes(x, bank, "ncc", center=center).accuracies
    scaled = evaluate_episodes(x * scale, bank, "ncc", center=center * scale).accuracies
    assert torch.equal(scaled, cl2n)


def test_registry_lists_and_creates_classifiers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"ncc", "ncc_l2", "ncc_raw", "logreg"} <= set(list_classifiers())
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_classifier("always_way0")
    class AlwaysFirstWay(FewShotClassifier):
        def scores(self, kernel, support, query):
            bsz, n_way, q_query = query.shape
            out = torch.zeros(bsz, n_way, n_way * q_query)
            out[:, 0] = 1.0
            return out

    x, labels = _clusters(6, 10, 4, noise=1.0, seed=0)
    bank = sample_episodes(labels, n_way=3, k_shot=2, q_query=4, episodes=10, seed=0)
    assert evaluate_episodes(x, bank, "always_way0").mean == pytest.approx(1 / 3)
    assert evaluate_episodes(x, bank, AlwaysFirstWay()).mean == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="already registered"):
        register_classifier("ncc")(AlwaysFirstWay)


@pytest.fixture(scope="module")
def small() -> tuple[torch.Tensor, object]:
    x, labels = _clusters(6, 10, 4, noise=1.0, seed=0, dtype=torch.float32)
    return x, sample_episodes(labels, n_way=3, k_shot=2, q_query=4, episodes=10, seed=0)


def _with(x: torch.Tensor, row: int, col: int, value: float) -> torch.Tensor:
    y = x.clone()
    y[row, col] = value
    return y


@pytest.mark.parametrize(
    ("make_args", "match"),
    [
        (
            lambda x, b: (_with(x, 7, 2, math.nan), b, "ncc_raw", {}),
            r"features contain 1 non-finite values \(NaN or inf\), the first at row 7, column 2",
        ),
        (lambda x, b: (_with(x, 3, 0, math.inf), b, "ncc_l2", {}), r"non-finite.*row 3"),
        (
            lambda x, b: (x[:-1], b, "ncc_raw", {}),
            r"features has 59 rows but the episode bank was drawn from 60 labels",
        ),
        (lambda x, b: (x[:, 0], b, "ncc_raw", {}), r"features must be 2-D \(N, d\), got shape"),
        (lambda x, b: (x.long(), b, "ncc_raw", {}), r"features must be floating point"),
        (lambda x, b: (x.numpy(), b, "ncc_raw", {}), r"features must be a torch.Tensor"),
        (lambda x, b: (x, b, "ncc", {}), r"classifier 'ncc' needs `center`.*got None"),
        (
            lambda x, b: (x, b, "ncc", {"center": torch.zeros(5)}),
            r"center must have shape \(4,\) to match the features, got \(5,\)",
        ),
        (
            lambda x, b: (x, b, "ncc", {"center": torch.tensor([0.0, math.nan, 0.0, 0.0])}),
            r"center must be a finite",
        ),
        (lambda x, b: (x, b, "knn", {}), r"unknown few-shot classifier 'knn'; known: \["),
        (lambda x, b: (x, b, "ncc_raw", {"max_episodes": 0}), r"max_episodes must be a positive"),
        (lambda x, b: (x, "bank", "ncc_raw", {}), r"bank must be an EpisodeBank"),
    ],
)
def test_bad_input_raises_a_value_error_that_names_it(small, make_args, match) -> None:
    features, bank, clf, kwargs = make_args(*small)
    with pytest.raises(ValueError, match=match):
        evaluate_episodes(features, bank, clf, **kwargs)
