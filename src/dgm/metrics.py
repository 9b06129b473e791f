r"""Sample quality in the feature space of the MNIST network that dgm ships (``dgm.features``).

A score means little alone: FIDs from different feature networks do not compare, and even real
images score above zero. So beside :func:`score` report :func:`floor` (real images against real
images: the best a model can hope for) and :func:`ceiling` (independent Bernoulli pixels with the
training mean: a model that learned only the average image).

Images are ``(N, 784)`` floats in [0, 1]; compare samples with a reference of the same kind
(Bernoulli draws with the binarized test set, grey means with the grey test set). Features are
``(N, 128)``. Every function is deterministic (a fixed seed where it draws).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dgm.features.mnist import features_and_labels

#: rows per block of a distance matrix: a block against 60,000 rows is 240 MB in float32
CHUNK = 1000


def gaussian_moments(features: Tensor) -> tuple[Tensor, Tensor]:
    """``(N, d)`` -> the mean ``(d,)`` and unbiased covariance ``(d, d)``, in float64."""
    f = features.double()
    return f.mean(0), torch.cov(f.T)


def _sqrtm_psd(a: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix by its eigendecomposition (float64)."""
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    r"""Squared Fréchet (2-Wasserstein) distance between two Gaussians (Dowson & Landau 1982),

    :math:`\|\mu_1 - \mu_2\|^2 + \mathrm{tr}\,\Sigma_1 + \mathrm{tr}\,\Sigma_2
    - 2\,\mathrm{tr}\,(\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2})^{1/2}`,

    the last trace from the eigenvalues of a symmetric PSD matrix, in float64. Means ``(d,)``,
    covariances ``(d, d)``.
    """
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))
    s1 = _sqrtm_psd(cov1)  # (d, d)
    m = s1 @ cov2 @ s1
    eig = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0)  # (d,)
    d2 = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * eig.sqrt().sum()
    return d2.item()


def fid(features_a: Tensor, features_b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017)."""
    return frechet_distance(*gaussian_moments(features_a), *gaussian_moments(features_b))


def kid(
    features_a: Tensor,
    features_b: Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    r"""Kernel distance (Bińkowski et al. 2018): the unbiased estimate of MMD² with the kernel
    :math:`k(x, y) = (x \cdot y / d + 1)^3`, averaged over random subsets of ``subset_size`` from
    each set (half the smaller set where that holds no more, so that subsets differ). Returns the
    mean and its standard error over subsets (which ignores the finite pools the subsets share)."""
    g = torch.Generator().manual_seed(seed)
    a, b = features_a.float(), features_b.float()  # products in float32, kernels in float64
    d = a.shape[1]
    smaller = min(len(a), len(b))
    m = subset_size if subset_size < smaller else max(2, smaller // 2)
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=g)[:m]]  # (m, d)
        y = b[torch.randperm(len(b), generator=g)[:m]]  # (m, d)
        k_xx, k_yy, k_xy = (
            ((u @ v.T).double() / d + 1) ** 3 for u, v in ((x, x), (y, y), (x, y))
        )  # (m, m)
        off = m * (m - 1)
        mmd2 = (
            (k_xx.sum() - k_xx.diagonal().sum()) / off
            + (k_yy.sum() - k_yy.diagonal().sum()) / off
            - 2 * k_xy.mean()
        )
        values.append(mmd2)
    v = torch.stack(values)  # (subsets,)
    stderr = v.std().item() / math.sqrt(subsets) if subsets > 1 else math.nan
    return v.mean().item(), stderr


def _squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """``(n, d)``, ``(m, d)`` -> ``(n, m)`` squared Euclidean distances, clamped at 0."""
    return (a.square().sum(1, keepdim=True) + b.square().sum(1) - 2 * a @ b.T).clamp(min=0)


def _kth_neighbour_radius2(x: Tensor, k: int) -> Tensor:
    """``(N, d)`` -> ``(N,)`` squared distance from each row to its k-th nearest other row."""
    return torch.cat(
        [_squared_distances(c, x).topk(k + 1, largest=False).values[:, k] for c in x.split(CHUNK)]
    )  # (N,): the nearest (index 0) is the row itself


def _coverage(points: Tensor, centres: Tensor, radius2: Tensor) -> float:
    """Fraction of ``points`` inside at least one ball ``(centres, radius2)``."""
    inside = [(_squared_distances(c, centres) <= radius2).any(1) for c in points.split(CHUNK)]
    return torch.cat(inside).double().mean().item()


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    r"""Improved precision and recall (Kynkäänniemi et al. 2019): the manifold of a set is the
    union of balls around its points with radius the distance to the k-th nearest neighbour;
    precision is the fraction of ``fake`` in the manifold of ``real``, recall the fraction of
    ``real`` in that of ``fake``. Features ``(N, d)``, ``(M, d)``, in blocks of ``CHUNK`` rows."""
    real, fake = real.float(), fake.float()
    precision = _coverage(fake, real, _kth_neighbour_radius2(real, k))
    recall = _coverage(real, fake, _kth_neighbour_radius2(fake, k))
    return precision, recall


def c2st_accuracy(
    real_features: Tensor, fake_features: Tensor, steps: int = 200, seed: int = 0
) -> float:
    r"""Classifier two-sample test (Lopez-Paz & Oquab 2017): held-out accuracy of a logistic
    regression telling ``real`` from ``fake``, trained by L-BFGS on a random half of each set
    (the larger set subsampled to the smaller's size) with a small L2 penalty, in float64.
    0.5: indistinguishable; 1: separable."""
    g = torch.Generator().manual_seed(seed)
    n = min(len(real_features), len(fake_features))
    real, fake = (
        f[torch.randperm(len(f), generator=g)[:n]].double() for f in (real_features, fake_features)
    )
    half = n // 2
    x_fit, x_held = torch.cat([real[:half], fake[:half]]), torch.cat([real[half:], fake[half:]])
    y_fit = torch.cat([torch.ones(half), torch.zeros(half)]).double()
    y_held = torch.cat([torch.ones(n - half), torch.zeros(n - half)]).double()
    mu, sd = x_fit.mean(0), x_fit.std(0).clamp(min=1e-6)
    x_fit, x_held = (x_fit - mu) / sd, (x_held - mu) / sd  # standardized by the fitting half
    w = torch.zeros(x_fit.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        logits = x_fit @ w + b  # (2 half,)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y_fit)
        loss = loss + 1e-4 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return ((x_held @ w + b > 0).double() == y_held).double().mean().item()


def label_histogram(labels: Tensor, num_classes: int = 10) -> Tensor:
    """``(N,)`` int labels -> ``(num_classes,)`` float64 frequencies summing to 1."""
    return torch.bincount(labels.flatten().cpu(), minlength=num_classes).double() / labels.numel()


def label_entropy(histogram: Tensor) -> float:
    r"""Entropy :math:`-\sum_c p_c \ln p_c` of a label histogram, in nats (ln 10: uniform)."""
    p = histogram.double()
    return -(p * p.clamp(min=1e-300).log()).sum().item()


@torch.no_grad()
def nearest_train_distance(samples: Tensor, train: Tensor) -> Tensor:
    """``(N, 784)``, ``(M, 784)`` -> ``(N,)`` pixel-space L2 distance of each sample to its nearest
    training image (small values flag memorization), in blocks of ``CHUNK`` samples."""
    s, t = samples.float(), train.float()
    nearest = torch.cat([_squared_distances(c, t).argmin(1) for c in s.split(CHUNK)])  # (N,)
    return (s - t[nearest]).norm(dim=1)  # (N,), exact: no cancellation in |s|^2 + |t|^2 - 2 s.t


@dataclass(frozen=True)
class Reference:
    """Real images and what every score against them needs, computed once: their features
    ``(M, 128)`` and labels ``(M,)`` (on the CPU), the squared radii ``(M,)`` of their k-th
    nearest neighbours in feature space (for precision), and optionally the training images
    ``(N, 784)`` that memorization is measured against."""

    images: Tensor
    features: Tensor
    labels: Tensor
    radius2: Tensor
    k: int
    train: Tensor | None = None

    @classmethod
    def of(cls, images: Tensor, train: Tensor | None = None, k: int = 3) -> Reference:
        """The reference of ``images`` ``(M, 784)`` in [0, 1] (see the class doc)."""
        features, labels = features_and_labels(images)
        features, labels = features.cpu(), labels.cpu()
        return cls(images, features, labels, _kth_neighbour_radius2(features, k), k, train)


def score(
    samples: Tensor,
    reference: Tensor | Reference,
    train: Tensor | None = None,
    n_subsets: int = 100,
    subset_size: int = 1000,
    k: int = 3,
    memorization: int = 1000,
) -> dict[str, Any]:
    """Every metric of ``samples`` ``(N, 784)`` against ``reference`` (a :class:`Reference`, or
    images ``(M, 784)``, say the test set): ``fid``, ``kid``, ``kid_stderr``, ``precision``,
    ``recall``, ``c2st_accuracy``, ``label_entropy`` and ``label_histogram`` (10 floats) of the
    samples' predicted labels; with training images (``train``, or the reference's), also
    ``nearest_train_distance``: the mean of :func:`nearest_train_distance` over the first
    ``memorization`` samples (a search through every training image in pixel space).
    """
    if not isinstance(reference, Reference):
        reference = Reference.of(reference, train, k)
    f_fake, labels = features_and_labels(samples)
    f_fake, f_real = f_fake.cpu(), reference.features
    kid_mean, kid_stderr = kid(f_real, f_fake, n_subsets, subset_size)
    precision = _coverage(f_fake, f_real, reference.radius2)
    recall = _coverage(f_real, f_fake, _kth_neighbour_radius2(f_fake, reference.k))
    histogram = label_histogram(labels)
    out: dict[str, Any] = {
        "fid": fid(f_real, f_fake),
        "kid": kid_mean,
        "kid_stderr": kid_stderr,
        "precision": precision,
        "recall": recall,
        "c2st_accuracy": c2st_accuracy(f_real, f_fake),
        "label_entropy": label_entropy(histogram),
        "label_histogram": histogram.tolist(),
    }
    train = reference.train if train is None else train
    if train is not None:
        near = nearest_train_distance(samples[:memorization], train.to(samples.device))
        out["nearest_train_distance"] = near.mean().item()
    return out


def floor(
    test: Tensor | Reference, train: Tensor, n: int | None = None, seed: int = 0, **kwargs: Any
) -> dict[str, Any]:
    """:func:`score` of ``n`` (default: as many as ``test``) random real ``train`` images against
    ``test``: what a perfect model would score. ``kwargs`` go to :func:`score`. Where the
    reference holds training images, ``nearest_train_distance`` is that of the test images
    themselves (a training image's nearest is itself): what a model that does not memorize
    reaches."""
    g = torch.Generator().manual_seed(seed)
    n = min(n or len(test.images if isinstance(test, Reference) else test), len(train))
    real = train[torch.randperm(len(train), generator=g)[:n].to(train.device)]
    if not isinstance(test, Reference):
        return score(real, test, **kwargs)
    out = score(real, dataclasses.replace(test, train=None), **kwargs)
    if test.train is not None:
        memorization = kwargs.get("memorization", 1000)
        near = nearest_train_distance(test.images[:memorization], test.train)
        out["nearest_train_distance"] = near.mean().item()
    return out


def ceiling(
    train: Tensor, test: Tensor | Reference, n: int | None = None, seed: int = 0, **kwargs: Any
) -> dict[str, Any]:
    """:func:`score` of ``n`` (default: as many as ``test``) images of independent Bernoulli pixels
    with the mean of ``train`` against ``test``: a model that learned only the average image."""
    g = torch.Generator().manual_seed(seed)
    mean = train.float().mean(0).cpu()  # (784,)
    n = n or len(test.images if isinstance(test, Reference) else test)
    x = (torch.rand(n, mean.numel(), generator=g) < mean).float()  # (n, 784)
    return score(x.to(train.device), test, **kwargs)


@dataclass
class Report:
    """A model's :func:`score` beside the :func:`floor` and :func:`ceiling` of its reference,
    with its first samples and their nearest training images (for a picture)."""

    model: dict[str, Any]
    floor: dict[str, Any]
    ceiling: dict[str, Any]
    samples: Tensor  # (P, 784): the first samples scored
    nearest: Tensor  # (P, 784): the training image nearest to each

    def summary(self) -> dict[str, Any]:
        """The model's metrics, and ``floor`` and ``ceiling`` objects with the same keys."""
        return {**self.model, "floor": self.floor, "ceiling": self.ceiling}


def report(
    samples: Tensor,
    reference: Reference,
    real: Tensor,
    seed: int = 0,
    pictured: int = 32,
    **kwargs: Any,
) -> Report:
    """:func:`score` of ``samples`` against ``reference``, its :func:`floor` from ``real`` images
    of the same kind as the reference's (say training images binarized like the test set) and its
    :func:`ceiling`, each from as many images as ``samples``; ``kwargs`` go to :func:`score`."""
    n = len(samples)
    train = reference.train if reference.train is not None else real
    model = score(samples, reference, **kwargs)
    low = floor(reference, real, n=n, seed=seed, **kwargs)
    high = ceiling(train, reference, n=n, seed=seed, **kwargs)
    shown = samples[:pictured]
    nearest = torch.cat([_squared_distances(c, train).argmin(1) for c in shown.split(CHUNK)])
    return Report(model, low, high, shown, train[nearest])
