"""Sample-quality metrics (dgm.metrics) and the shipped MNIST feature network (dgm.features)."""

from __future__ import annotations

import math

import pytest
import torch

from dgm.data import load_dataset, to_unit_interval
from dgm.features.mnist import (
    SHA256,
    WEIGHTS,
    FeatureNetworkError,
    features_and_labels,
    load_feature_network,
    read_feature_network,
)
from dgm.metrics import (
    Reference,
    c2st_accuracy,
    ceiling,
    fid,
    floor,
    frechet_distance,
    kid,
    label_entropy,
    label_histogram,
    nearest_train_distance,
    precision_recall,
    report,
)


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
    g = torch.Generator().manual_seed(1)
    d = 6
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    s1, s2 = (torch.rand(d, generator=g, dtype=torch.float64) + 0.1 for _ in range(2))
    expected = (mu1 - mu2).square().sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum()
    # a common rotation keeps the distance: cov = R diag(s) R^T
    r, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    got = frechet_distance(r @ mu1, r @ torch.diag(s1) @ r.T, r @ mu2, r @ torch.diag(s2) @ r.T)
    assert got == pytest.approx(expected.item(), rel=1e-9, abs=1e-12)
    assert frechet_distance(mu1, torch.diag(s1), mu1, torch.diag(s1)) == pytest.approx(0, abs=1e-12)


def test_frechet_distance_matches_scipy_for_non_commuting_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(2)
    a, b = (torch.randn(5, 5, generator=g, dtype=torch.float64) for _ in range(2))
    cov1, cov2 = a @ a.T, b @ b.T
    mu = torch.zeros(5, dtype=torch.float64)
    covmean = linalg.sqrtm(cov1.numpy() @ cov2.numpy()).real
    expected = (cov1.trace() + cov2.trace()).item() - 2 * covmean.trace()
    assert frechet_distance(mu, cov1, mu, cov2) == pytest.approx(expected, rel=1e-8)


def test_fid_of_two_samples_of_one_gaussian_is_its_finite_sample_bias():
    # for N(0, I_d): E||mu1 - mu2||^2 = 2d / n and E||S1^1/2 - S2^1/2||_F^2 ~ d (d + 1) / (2n)
    n, d = 10_000, 8
    a, b = torch.randn(2, n, d, dtype=torch.float64)
    bias = (2 * d + d * (d + 1) / 2) / n
    assert 0 <= fid(a, b) < 3 * bias  # the sum of ~d^2/2 squares: relative sd ~ 0.2
    assert fid(a, b + 1.0) == pytest.approx(d, rel=0.05)


def test_kid_is_unbiased_and_positive_for_shifted_samples():
    # fresh samples every trial, so the trials are independent and their SE is honest
    trials, m, d = 200, 100, 8
    values = torch.tensor(
        [kid(*torch.randn(2, m, d), subsets=1, subset_size=m)[0] for _ in range(trials)]
    )
    se = values.std() / math.sqrt(trials)
    assert abs(values.mean()) < 4 * se
    a, b = torch.randn(2, 1000, d)
    shifted, shifted_se = kid(a, b + 0.5, subsets=20, subset_size=200)
    assert shifted > 20 * shifted_se > 0


def test_precision_recall_identical_and_disjoint_sets():
    x = torch.randn(2000, 16)
    assert precision_recall(x, x.clone()) == (1.0, 1.0)
    assert precision_recall(x, torch.randn(2000, 16) + 20.0) == (0.0, 0.0)
    # half the fakes far away: precision 1/2, recall of the real manifold still full
    fake = torch.cat([x[:1000], torch.randn(1000, 16) + 20.0])
    precision, _ = precision_recall(x, fake)
    assert precision == pytest.approx(0.5, abs=0.01)


def test_c2st_near_half_for_one_distribution_and_one_for_separable():
    n, d = 4000, 16
    a, b = torch.randn(2, n, d)
    held = n  # half of each set held out: n / 2 + n / 2 examples
    assert abs(c2st_accuracy(a, b) - 0.5) < 4 * 0.5 / math.sqrt(held)
    b[:, 0] += 10.0
    assert c2st_accuracy(a, b) > 0.99


def test_label_entropy():
    assert label_entropy(torch.full((10,), 0.1)) == pytest.approx(math.log(10))
    hist = label_histogram(torch.tensor([3, 3, 3, 3]))
    assert hist.tolist() == [0, 0, 0, 1.0, 0, 0, 0, 0, 0, 0] and label_entropy(hist) == 0


def test_nearest_train_distance():
    train = torch.rand(50, 784)
    samples = torch.cat([train[:3], train[:2] + 0.1])
    expected = torch.cdist(samples.double(), train.double()).min(1).values.float()
    got = nearest_train_distance(samples, train)
    assert torch.allclose(got, expected, atol=1e-3)
    assert got[:3].max() < 1e-3


def test_feature_network_refuses_a_tampered_file(tmp_path):
    data = bytearray(WEIGHTS.read_bytes())
    copy = tmp_path / "mnist_classifier.safetensors"
    copy.write_bytes(data)
    assert read_feature_network(copy, SHA256).features(torch.zeros(1, 784)).shape == (1, 128)
    data[len(data) // 2] ^= 1
    copy.write_bytes(data)
    with pytest.raises(FeatureNetworkError, match="mnist_classifier.safetensors"):
        read_feature_network(copy, SHA256)


def test_feature_network_is_frozen_and_cached():
    net = load_feature_network()
    assert net is load_feature_network("cpu") and not net.training
    assert not any(p.requires_grad for p in net.parameters())


@pytest.fixture(scope="module")
def mnist_test():
    mnist = load_dataset("mnist", progress=False)
    return to_unit_interval(mnist.test_images), mnist.test_labels


def test_shipped_classifier_accuracy(mnist_test):
    x, y = mnist_test
    _, labels = features_and_labels(x)
    assert (labels == y).double().mean() >= 0.993


def test_floor_is_near_ideal_and_ceiling_far(mnist_test):
    # two random halves of the test set (its first 5,000 images are cleaner than the last)
    x, _ = mnist_test
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    a, b = x[perm[:5000]], x[perm[5000:]]
    # subsets of 100 from pools of 5,000 rarely overlap, so kid_stderr is an honest SE
    kw = {"n_subsets": 50, "subset_size": 100}
    low, high = floor(a, b, **kw), ceiling(b, a, **kw)
    assert set(low) == set(high)
    assert low["fid"] < 0.05 * high["fid"]
    assert abs(low["kid"]) < 4 * low["kid_stderr"] and high["kid"] > 20 * high["kid_stderr"]
    # k = 3 balls miss about a tenth of fresh real points (0.89 here); the ceiling's noise images
    # all look alike, so their recall is 0, while their precision is not low: their features lie
    # near the middle of the real ones, inside the wide balls of real outliers (a known weakness)
    assert min(low["precision"], low["recall"]) > 0.8 and high["recall"] < 0.05
    assert (
        abs(low["c2st_accuracy"] - 0.5) < 4 * 0.5 / math.sqrt(5000) and high["c2st_accuracy"] > 0.99
    )
    assert low["label_entropy"] > math.log(10) - 0.01 and len(low["label_histogram"]) == 10
    assert high["label_entropy"] < math.log(10) / 2  # nearly every noise image reads as an 8


def test_a_model_that_draws_real_images_scores_like_the_floor(mnist_test):
    """report(): samples that are fresh real images score as the floor does, and the nearest
    training image of a copied training image is itself (distance 0: memorization shows)."""
    x, _ = mnist_test
    ref = Reference.of(x[:2000], train=x[2000:6000])
    kw = {"n_subsets": 20, "subset_size": 200, "memorization": 200}
    fresh = report(x[6000:8000], ref, real=x[8000:], **kw)
    assert abs(fresh.model["fid"] - fresh.floor["fid"]) < 0.1 * fresh.ceiling["fid"]
    assert abs(fresh.model["recall"] - fresh.floor["recall"]) < 0.15 > fresh.ceiling["recall"]
    copied = report(x[2000:4000], ref, real=x[8000:], **kw)
    assert copied.model["nearest_train_distance"] < 1e-3 < fresh.floor["nearest_train_distance"]
    assert torch.equal(copied.nearest, copied.samples)
